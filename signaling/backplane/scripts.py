"""The Lua scripts that change room membership in Redis, each atomic.

Every script takes the key prefix as ``ARGV[1]``. Keys (``P`` is the prefix):

- ``P seq``: the event counter; every join and leave takes the next number;
- ``P rooms``: the set of room ids;
- ``P room:R``: the members of room R, a sorted set scored by join number;
- ``P room:R:nodes``: hash, member -> the node (process) that holds it;
- ``P room:R:ids``: hash, member -> its identity (JSON), for the members
  that joined with one;
- ``P node:N``: hash, member -> room, of node N (what to remove if N dies);
- ``P nodes``: the set of live nodes; ``P node:N:alive``: a key with a TTL
  that node N refreshes; ``P node:N:dead``: set when N was declared dead;
- ``P beat``: when (Redis's clock, ms) any node last refreshed its key;
- ``P grace``: set (with a TTL) after an outage while nodes re-register;
- ``P node:N:resume``: hash, resume token -> client id, of the sessions
  node N holds that may resume (removed with the node when it dies).

Each change is published, as a JSON array, to the inbox channel
``P inbox:N`` of every node with members in the room after it:
``["j", room, number, member, node, identity]`` for a join (identity: its
JSON text, or ``""``), ``["l", room, number,
member]`` for a leave, ``["m", room, number, member, node]`` when a member
(its join ``number``) moves to another node (a resume there; no notice to
the members), ``["c", room, 0, reason]`` when the operator closes
the room. Inboxes also carry relayed frames and the requests and answers
that move a session between nodes (see rooms.py).
"""

from __future__ import annotations

_COMMON = b"""
local P = ARGV[1]

local function publish_room(room, event)
  local seen = {}
  for _, node in ipairs(redis.call('HVALS', P .. 'room:' .. room .. ':nodes')) do
    if not seen[node] then
      seen[node] = true
      redis.call('PUBLISH', P .. 'inbox:' .. node, event)
    end
  end
end

local function remove(room, member)
  local key = P .. 'room:' .. room
  local node = redis.call('HGET', key .. ':nodes', member)
  if redis.call('ZREM', key, member) == 0 then
    return false
  end
  redis.call('HDEL', key .. ':nodes', member)
  redis.call('HDEL', key .. ':ids', member)
  if node then
    redis.call('HDEL', P .. 'node:' .. node, member)
  end
  local number = redis.call('INCR', P .. 'seq')
  if redis.call('ZCARD', key) == 0 then
    redis.call('DEL', key, key .. ':nodes', key .. ':ids')
    redis.call('SREM', P .. 'rooms', room)
  else
    publish_room(room, cjson.encode({'l', room, number, member}))
  end
  return number
end

-- HMGET of any number of fields (unpack fails past about 8,000).
local function hmget(key, fields)
  local values = {}
  for first = 1, #fields, 1000 do
    local chunk = {}
    for i = first, math.min(first + 999, #fields) do
      chunk[#chunk + 1] = fields[i]
    end
    local got = redis.call('HMGET', key, unpack(chunk))
    for i = 1, #chunk do
      values[#values + 1] = got[i]
    end
  end
  return values
end

-- The members of a room in join order: {member, number, node, ...}.
local function members_of(key)
  local members = redis.call('ZRANGE', key, 0, -1, 'WITHSCORES')
  local ids = {}
  for i = 1, #members, 2 do
    ids[#ids + 1] = members[i]
  end
  local nodes = hmget(key .. ':nodes', ids)
  local flat = {}
  for i = 1, #ids do
    flat[#flat + 1] = ids[i]
    flat[#flat + 1] = members[2 * i]
    flat[#flat + 1] = nodes[i] or ''
  end
  return flat
end

local function reap(node)
  local index = redis.call('HGETALL', P .. 'node:' .. node)
  for i = 1, #index, 2 do
    remove(index[i + 1], index[i])
  end
  redis.call(
    'DEL', P .. 'node:' .. node, P .. 'node:' .. node .. ':alive', P .. 'node:' .. node .. ':resume'
  )
  redis.call('SREM', P .. 'nodes', node)
  return #index / 2
end
"""

#: ARGV: prefix, room, member, node, max room size, max rooms (0: no bound),
#: the member's identity (JSON text, or ``""`` for none). Returns ``{"ok",
#: number, {member, identity, ...}, member, number, node, ...}`` (the
#: identities of the members before that have one, then those members in
#: join order), ``{"room_full"}``, ``{"too_many_rooms"}``, ``{"dead"}`` if
#: the node was declared dead (nothing of it may come back), or
#: ``{"recovering"}`` during the grace after an outage (``P grace``), while
#: nodes put their members back.
JOIN = (
    _COMMON
    + b"""
local room, member, node = ARGV[2], ARGV[3], ARGV[4]
local max_size, max_rooms = tonumber(ARGV[5]), tonumber(ARGV[6])
if redis.call('EXISTS', P .. 'node:' .. node .. ':dead') == 1 then
  return {'dead'}
end
if redis.call('EXISTS', P .. 'grace') == 1 then
  return {'recovering'}
end
local key = P .. 'room:' .. room
local size = redis.call('ZCARD', key)
if size == 0 then
  if max_rooms > 0 and redis.call('SCARD', P .. 'rooms') >= max_rooms then
    return {'too_many_rooms'}
  end
elseif max_size > 0 and size >= max_size then
  return {'room_full'}
end
local identity = ARGV[7]
local number = redis.call('INCR', P .. 'seq')
local reply = {'ok', number, size > 0 and redis.call('HGETALL', key .. ':ids') or {}}
for _, field in ipairs(members_of(key)) do
  reply[#reply + 1] = field
end
redis.call('ZADD', key, number, member)
redis.call('HSET', key .. ':nodes', member, node)
if identity ~= '' then
  redis.call('HSET', key .. ':ids', member, identity)
end
redis.call('HSET', P .. 'node:' .. node, member, room)
redis.call('SADD', P .. 'rooms', room)
publish_room(room, cjson.encode({'j', room, number, member, node, identity}))
return reply
"""
)

#: ARGV: prefix, room, member. Returns the leave's number, or nil if the
#: member was not in the room.
LEAVE = (
    _COMMON
    + b"""
local number = remove(ARGV[2], ARGV[3])
if number then
  return number
end
return nil
"""
)

#: ARGV: prefix, node, TTL in milliseconds, whether the node was in the
#: cluster before (1 after a reconnection, 0 at its first start). Refreshes
#: the node's liveness. When no node refreshed for longer than the TTL (Redis
#: was down, or restarted) and this node was in the cluster before, every
#: key may have expired or been lost: it starts the cluster's grace of 2
#: TTLs (``P grace``), during which nobody is declared dead and joins wait,
#: so that every live node refreshes and puts its members back first.
#: Returns ``{alive, rooms, nodes, grace}``: alive is 0 if the node was
#: declared dead (it must start over); grace is 1 while the grace lasts.
HEARTBEAT = b"""
local P, node, ttl, before = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local alive = 0
if redis.call('EXISTS', P .. 'node:' .. node .. ':dead') == 0 then
  redis.call('SET', P .. 'node:' .. node .. ':alive', '1', 'PX', ttl)
  redis.call('SADD', P .. 'nodes', node)
  alive = 1
end
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local last = redis.call('GET', P .. 'beat')
if before == '1' and (not last or now - tonumber(last) > ttl) then
  redis.call('SET', P .. 'grace', '1', 'PX', 2 * ttl)
end
redis.call('SET', P .. 'beat', now)
return {
  alive,
  redis.call('SCARD', P .. 'rooms'),
  redis.call('SCARD', P .. 'nodes'),
  redis.call('EXISTS', P .. 'grace'),
}
"""

#: ARGV: prefix, this node, seconds to remember a dead node. Declares dead
#: every other node whose liveness key has expired, and removes its members
#: (each room hears ``leave-client``). Returns ``{node, members, ...}``.
REAP = (
    _COMMON
    + b"""
local me, remember = ARGV[2], ARGV[3]
local reaped = {}
if redis.call('EXISTS', P .. 'grace') == 1 then
  return reaped
end
for _, node in ipairs(redis.call('SMEMBERS', P .. 'nodes')) do
  if node ~= me and redis.call('EXISTS', P .. 'node:' .. node .. ':alive') == 0 then
    local count = reap(node)
    redis.call('SET', P .. 'node:' .. node .. ':dead', '1', 'EX', remember)
    reaped[#reaped + 1] = node
    reaped[#reaped + 1] = count
  end
end
return reaped
"""
)

#: ARGV: prefix, node. A clean exit: removes the node's members and keys.
UNREGISTER = (
    _COMMON
    + b"""
return reap(ARGV[2])
"""
)

#: ARGV: prefix, node, the highest event number the node has seen, then
#: (member, room, number, identity or ``""``) for each member the node holds. Makes Redis agree
#: with the node after an outage: members of the node that it no longer holds
#: are removed (their rooms hear of it), those missing are put back under
#: their old numbers during the grace (Redis restarted empty) and reported
#: lost after it. Returns ``{removed, restored, {lost member, ...}}``.
RESYNC = (
    _COMMON
    + b"""
local node = ARGV[2]
local index_key = P .. 'node:' .. node
local held = {}
for i = 4, #ARGV, 4 do
  held[ARGV[i]] = ARGV[i + 1]
end
local removed, restored, highest = 0, 0, tonumber(ARGV[3])
local index = redis.call('HGETALL', index_key)
for i = 1, #index, 2 do
  if held[index[i]] ~= index[i + 1] then
    if remove(index[i + 1], index[i]) then
      removed = removed + 1
    end
    redis.call('HDEL', index_key, index[i])
  end
end
local grace = redis.call('EXISTS', P .. 'grace') == 1
local lost = {}
for i = 4, #ARGV, 4 do
  local member, room, number = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  local key = P .. 'room:' .. room
  if redis.call('ZSCORE', key, member) then
    redis.call('HSET', index_key, member, room)
  elseif grace then
    redis.call('ZADD', key, number, member)
    redis.call('HSET', key .. ':nodes', member, node)
    if ARGV[i + 3] ~= '' then
      redis.call('HSET', key .. ':ids', member, ARGV[i + 3])
    end
    redis.call('SADD', P .. 'rooms', room)
    redis.call('HSET', index_key, member, room)
    restored = restored + 1
  else
    -- Lost while the others went on (they were told it left): the node
    -- must let it go rather than put it back unannounced.
    lost[#lost + 1] = member
  end
  if number > highest then
    highest = number
  end
end
if tonumber(redis.call('GET', P .. 'seq') or '0') < highest then
  redis.call('SET', P .. 'seq', highest)
end
return {removed, restored, lost}
"""
)

#: ARGV: prefix, room. Returns ``{counter, {member, identity, ...}, member,
#: number, node, ...}``: the event counter now, the identities of the room's
#: members that have one, and the members in join order.
SNAPSHOT = (
    _COMMON
    + b"""
local key = P .. 'room:' .. ARGV[2]
local reply = {redis.call('GET', P .. 'seq') or '0', redis.call('HGETALL', key .. ':ids')}
for _, field in ipairs(members_of(key)) do
  reply[#reply + 1] = field
end
return reply
"""
)

#: ARGV: prefix, room, reason. Tells every node with members in the room to
#: close their connections (``["c", room, 0, reason]``); returns how many
#: members the room has.
CLOSE_ROOM = (
    _COMMON
    + b"""
local room = ARGV[2]
local count = redis.call('ZCARD', P .. 'room:' .. room)
if count > 0 then
  publish_room(room, cjson.encode({'c', room, 0, ARGV[3]}))
end
return count
"""
)

#: ARGV: prefix, the most rooms to list. Returns ``{room, count, member, ...,
#: room, count, ...}``: rooms with their members in join order.
LIST_ROOMS = b"""
local P, limit = ARGV[1], tonumber(ARGV[2])
local reply = {}
local listed = 0
for _, room in ipairs(redis.call('SMEMBERS', P .. 'rooms')) do
  if listed >= limit then
    break
  end
  listed = listed + 1
  local members = redis.call('ZRANGE', P .. 'room:' .. room, 0, -1)
  reply[#reply + 1] = room
  reply[#reply + 1] = #members
  for _, member in ipairs(members) do
    reply[#reply + 1] = member
  end
end
return reply
"""

#: ARGV: prefix, resume token, this node. Returns the live node, other than
#: this one, that holds the session of the token, or nil.
FIND_HOLDER = b"""
local P, token, me = ARGV[1], ARGV[2], ARGV[3]
for _, node in ipairs(redis.call('SMEMBERS', P .. 'nodes')) do
  if node ~= me and redis.call('HEXISTS', P .. 'node:' .. node .. ':resume', token) == 1 then
    if redis.call('EXISTS', P .. 'node:' .. node .. ':alive') == 1 then
      return node
    end
    return nil
  end
end
return nil
"""

#: ARGV: prefix, room, member, its join number, the node that held it, the
#: node it moves to. Moves the member (its place in the room, its join
#: number and identity unchanged) and tells the room's nodes (``"m"``).
#: Returns ``{"ok", counter, {member, identity, ...}, member, number,
#: node, ...}`` like a join (the event counter now, then the room), or
#: ``{"gone"}`` if the member is no longer the old node's in that room,
#: ``{"dead"}`` if the new node was declared dead.
MOVE = (
    _COMMON
    + b"""
local room, member, number, from, to = ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5], ARGV[6]
if redis.call('EXISTS', P .. 'node:' .. to .. ':dead') == 1 then
  return {'dead'}
end
local key = P .. 'room:' .. room
local score = redis.call('ZSCORE', key, member)
local holder = redis.call('HGET', key .. ':nodes', member)
if not score or tonumber(score) ~= number or holder ~= from then
  return {'gone'}
end
redis.call('HSET', key .. ':nodes', member, to)
redis.call('HDEL', P .. 'node:' .. from, member)
redis.call('HSET', P .. 'node:' .. to, member, room)
publish_room(room, cjson.encode({'m', room, number, member, to}))
local reply = {'ok', redis.call('GET', P .. 'seq') or '0', redis.call('HGETALL', key .. ':ids')}
for _, field in ipairs(members_of(key)) do
  reply[#reply + 1] = field
end
return reply
"""
)

#: ARGV: prefix, room, member, node. Removes the member (as LEAVE) if it is
#: still the node's: a member the node handed over to another node that
#: never moved it (it died meanwhile). Returns the leave's number, or nil.
LEAVE_IF_HELD = (
    _COMMON
    + b"""
local room, member, node = ARGV[2], ARGV[3], ARGV[4]
if redis.call('HGET', P .. 'room:' .. room .. ':nodes', member) ~= node then
  return nil
end
local number = remove(room, member)
if number then
  return number
end
return nil
"""
)
