// A browser client for the signaling server: joins a room over WebSocket and
// keeps one RTCPeerConnection to every other member (full mesh).
//
// Call flow: every member already in the room offers to a newcomer when it
// gets `new-client`; the newcomer answers.  Later renegotiation (ICE restart,
// track changes) uses "perfect negotiation": of any two peers the newcomer is
// the polite one, so simultaneous offers resolve without deadlock.
//
// ICE servers: every RTCPeerConnection is made with `rtcConfig`, which is,
// in order of precedence:
//   1. the app's `options.rtcConfig`, as given, when it has `iceServers`;
//   2. else the app's `options.rtcConfig` (if any) with the `ice_servers` of
//      the server's last `joined` as `iceServers` (STUN, and TURN with
//      credentials made for this client; a server may take them from its
//      auth webhook instead of its own options);
//   3. else no ICE servers (`iceServers: []`), as with a server that sends
//      none.
// So an app that names its own ICE servers keeps them, one that names none
// gets the server's, and a server without ICE options changes nothing.
// Connections made before a `joined` keep the configuration they were made
// with.
//
// Resuming (option `resume`, default true): the client connects with
// `?resume=1`, keeps the server's `resume_token` and the highest `seq`
// received, and after a drop (any close but close(), 4001 unauthorized,
// 4003 resumed elsewhere, or one the server ended with a close frame)
// reconnects with `?resume_token=T&last_seq=N`, with the usual backoff,
// keeping the room and every RTCPeerConnection meanwhile. Messages for
// peers sent while away (offers, answers, candidates, a leave or join) are
// queued and sent once resumed. Resumed (`resumed`): the replayed frames
// are handled as usual (any with a seq already seen is ignored), and a
// peer connection whose ICE failed (or stays `disconnected` for
// DISCONNECTED_RESTART_MS) restarts ICE; no `peer-left`, no rejoin. The
// server answered `resume_failed` (or has no resume; `resume-failed`): as
// without resume, every peer is dropped (`peer-left`) and the client
// rejoins under its new id. Closed with 4003 (a newer connection took the
// session over with its token: `taken-over`): it stops.
//
// No dependencies and no build step: import it as an ES module.

const KINDS = ["audio", "video"];
// The server closes with this after an `unauthorized` error.
const CLOSE_UNAUTHORIZED = 4001;
// The server closes with this when a newer connection resumed our session.
const CLOSE_RESUMED_ELSEWHERE = 4003;
// After a resume, a peer connection still `disconnected` this long (ms)
// restarts ICE.
const DISCONNECTED_RESTART_MS = 3000;
// Messages kept for the peers while away; past it the client gives up
// resuming (the session starts afresh on reconnect) rather than grow.
const MAX_OUTBOX = 1000;

/**
 * Events (all CustomEvent, data in `event.detail`):
 * - `open` {id, resumed}: connected; `id` is this client's id until the
 *   next reconnect (the same one when `resumed`).
 * - `resumed` {id}: reconnected to the same session after a drop: room,
 *   peers and peer connections kept (follows `open`).
 * - `resume-failed` {code, message}: the session could not be resumed (the
 *   server's grace ran out, say); every peer is dropped (`peer-left`) and
 *   the client rejoins under a new id, as without resume.
 * - `taken-over` {code, reason}: the server closed with 4003, a
 *   newer connection took this session over with its resume token (another
 *   tab, or a stolen token); the client stops (as after close()).
 * - `joined` {room, peers}: in the room; `peers` were there before us
 *   (`serverIceServers` now holds the ICE servers the server sent).
 * - `peer-joined` {id}, `peer-left` {id}: a member appeared or is gone.
 * - `stream` {id, stream, track}: a remote track arrived; `stream` is the
 *   same MediaStream for every track of that peer.
 * - `peer-state` {id, state}: the RTCPeerConnection's connectionState.
 * - `disconnected` {code, reason, retryIn}: the socket closed; a reconnect
 *   follows after `retryIn` ms (null when it will not: after close(), with
 *   `reconnect: false`, after the server closed with 4001, unauthorized,
 *   since the same token would be refused again, or with 4003); `resuming`:
 *   the reconnect will try to resume (peers are kept until it is known).
 * - `error` {code, message, ...}: a server `error` payload, or a client-side
 *   problem (`server_unreachable`, `negotiation_failed`, `bad_message`,
 *   `bad_ice_servers`).
 * - `closed`: close() finished; nothing more happens.
 */
export class SignalingClient extends EventTarget {
  /**
   * @param {string} url  ws:// or wss:// URL of the server's /connect.
   * @param {object} [options]
   * @param {string} [options.room]  Room to join as soon as connected.
   * @param {string} [options.token]  Room token sent in every `join`
   *   payload (the first and each rejoin after a reconnect); see `token`.
   * @param {MediaStream} [options.stream]  Local media sent to every peer.
   * @param {RTCConfiguration} [options.rtcConfig]  For every peer
   *   connection; with `iceServers` it overrides the server's ICE servers
   *   (see the top of this file).
   * @param {boolean} [options.trickle=true]  Send candidates as they are
   *   found; false waits for gathering to finish and sends them in the SDP.
   * @param {number} [options.gatherTimeout=5000]  Non-trickle: longest wait
   *   for gathering (ms) before sending what was found.
   * @param {boolean} [options.reconnect=true]  Reconnect after a drop.
   * @param {boolean} [options.resume=true]  Resume the session (same id,
   *   room and peer connections) when reconnecting after a drop, if the
   *   server allows it (see the top of this file).
   * @param {number} [options.minRetryDelay=500]  First reconnect delay (ms),
   *   doubled per failed attempt up to `maxRetryDelay`.
   * @param {number} [options.maxRetryDelay=10000]
   */
  constructor(url, options = {}) {
    super();
    this.url = url;
    this.stream = options.stream ?? null;
    this._appConfig = options.rtcConfig ?? null;
    this._serverIceServers = null;
    this.trickle = options.trickle ?? true;
    this.gatherTimeout = options.gatherTimeout ?? 5000;
    this.reconnect = options.reconnect ?? true;
    this.resume = options.resume ?? true;
    this.minRetryDelay = options.minRetryDelay ?? 500;
    this.maxRetryDelay = options.maxRetryDelay ?? 10000;
    this._room = options.room ?? null;
    /**
     * The room token every `join` carries in its payload (null: none).
     * Set a fresh one before it expires; the next join (a rejoin after a
     * reconnect, say) sends it. Unlike `connectUrl(pageUrl, {token})`, it
     * stays out of URLs, which servers and proxies log.
     */
    this.token = options.token ?? null;
    this._id = null;
    this._ws = null;
    this._peers = new Map();
    this._closed = false;
    this._attempt = 0;
    this._retryTimer = null;
    this._paused = new Set();
    // Resuming: the server's token (null: nothing to resume), the highest
    // seq received, and what was sent while away.
    this._resumeToken = null;
    this._lastSeq = 0;
    this._outbox = [];
  }

  /** This client's id while connected, else null. */
  get id() {
    return this._id;
  }

  /** The room joined (or to be joined on connect), else null. */
  get room() {
    return this._room;
  }

  /**
   * The RTCConfiguration new peer connections get: the app's `rtcConfig`
   * if it has `iceServers`, else it (or nothing) with the server's ICE
   * servers, else no ICE servers. Setting it sets the app's configuration.
   */
  get rtcConfig() {
    const app = this._appConfig ?? {};
    if (app.iceServers !== undefined) return app;
    return { ...app, iceServers: this._serverIceServers ?? [] };
  }

  set rtcConfig(config) {
    this._appConfig = config ?? null;
  }

  /** The ICE servers of the server's last `joined` (null: it sent none). */
  get serverIceServers() {
    return this._serverIceServers;
  }

  /** A new Map of peer id to its RTCPeerConnection. */
  get peers() {
    return new Map([...this._peers].map(([id, peer]) => [id, peer.pc]));
  }

  /**
   * Stop or resume sending the local `kind` ("audio" or "video") track to
   * every peer, present and future. A paused track is disabled and its
   * senders send nothing at all (not black frames or silence), so peers see
   * its frames stop; the camera or microphone stays open.
   */
  setSending(kind, sending) {
    const track = this.stream?.getTracks().find((t) => t.kind === kind);
    if (!track) return;
    track.enabled = sending;
    if (sending) this._paused.delete(kind);
    else this._paused.add(kind);
    for (const peer of this._peers.values()) {
      const sender = peer.senders.get(kind);
      if (sender) sender.replaceTrack(sending ? track : null).catch(() => {});
    }
  }

  /** Whether the local `kind` track is being sent (see setSending). */
  isSending(kind) {
    return !this._paused.has(kind) && Boolean(this.stream?.getTracks().some((t) => t.kind === kind));
  }

  /** Open the socket (and join `room` once the server greets us). */
  connect() {
    if (this._ws) return;
    this._closed = false;
    const ws = new WebSocket(this._connectUrl());
    this._ws = ws;
    let opened = false;
    ws.onopen = () => {
      opened = true;
      this._attempt = 0;
    };
    ws.onmessage = (event) => this._onMessage(event.data);
    ws.onclose = (event) => this._onSocketClose(ws, event, opened);
  }

  /** Join `room` (leaving the current one first). */
  join(room) {
    if (this._room !== null) this.leave();
    this._room = room;
    if (this._id !== null || this._resuming) this._sendJoin();
  }

  /** Leave the room and hang up on every peer; the socket stays open. */
  leave() {
    if (this._room === null) return;
    if (this._id !== null || this._resuming) this._send("leave", {});
    this._room = null;
    this._dropPeers();
  }

  /** Leave, close the socket and stop reconnecting. */
  close() {
    this._closed = true;
    clearTimeout(this._retryTimer);
    this.leave();
    this._forgetSession();
    const ws = this._ws;
    this._ws = null;
    this._id = null;
    if (ws) ws.close(1000);
    this._emit("closed");
  }

  _emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  _send(type, payload) {
    const ws = this._ws;
    if (this._resuming) {
      if (this._outbox.length < MAX_OUTBOX) this._outbox.push({ type, payload });
      else {
        this._resumeFailed({
          code: "resume_abandoned",
          message: `more than ${MAX_OUTBOX} messages waited for the connection`,
        });
      }
    } else if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ type, payload }));
  }

  // Away from a session that may resume: its id is not ours again yet.
  get _resuming() {
    return this._resumeToken !== null && this._id === null;
  }

  _connectUrl() {
    if (!this.resume) return this.url;
    const url = new URL(this.url);
    url.searchParams.set("resume", "1"); // also for the fresh session of a failed resume
    if (this._resumeToken !== null) {
      url.searchParams.set("resume_token", this._resumeToken);
      url.searchParams.set("last_seq", String(this._lastSeq));
    }
    return url.href;
  }

  _forgetSession() {
    this._resumeToken = null;
    this._lastSeq = 0;
    this._outbox = [];
  }

  _sendJoin() {
    const payload = { room_id: this._room };
    if (this.token) payload.token = this.token;
    this._send("join", payload);
  }

  _onSocketClose(ws, event, opened) {
    if (ws !== this._ws) return; // closed by close(), or superseded
    this._ws = null;
    const wasResuming = this._resuming;
    this._id = null;
    if (this._closed) return;
    const elsewhere = event.code === CLOSE_RESUMED_ELSEWHERE;
    const retry = this.reconnect && event.code !== CLOSE_UNAUTHORIZED && !elsewhere;
    // A close frame from the server (bar 4003) means it ended the session.
    if (!retry || (event.wasClean && !wasResuming)) this._forgetSession();
    if (!this._resuming) this._dropPeers(); // the server tells the others we left
    let retryIn = null;
    if (retry) {
      retryIn = Math.min(this.maxRetryDelay, this.minRetryDelay * 2 ** this._attempt);
      this._attempt += 1;
      this._retryTimer = setTimeout(() => this.connect(), retryIn);
    }
    const resuming = this._resuming;
    this._emit("disconnected", { code: event.code, reason: event.reason, retryIn, resuming });
    if (elsewhere) {
      this._closed = true;
      this._emit("taken-over", { code: event.code, reason: event.reason });
    }
    if (!opened) {
      this._emit("error", {
        code: "server_unreachable",
        message: `cannot reach the signaling server at ${this.url}`,
      });
    }
  }

  _onMessage(data) {
    let message;
    try {
      message = JSON.parse(data);
    } catch {
      this._emit("error", { code: "bad_message", message: "the server sent invalid JSON" });
      return;
    }
    if (typeof message.seq === "number") {
      if (message.seq <= this._lastSeq) return; // replayed, already seen
      this._lastSeq = message.seq;
    }
    const payload = message.payload ?? {};
    switch (message.type) {
      case "notify-client-id":
        this._onClientId(payload);
        break;
      case "joined":
        // Before any peer connection of this room is made.
        this._serverIceServers = Array.isArray(payload.ice_servers) ? payload.ice_servers : null;
        this._emit("joined", { room: payload.room_id, peers: payload.clients });
        for (const id of payload.clients) this._addPeer(id, true);
        break;
      case "new-client":
        // We were here first: we offer (negotiationneeded fires once the
        // local media or receive-only transceivers are added).
        this._addLocalMedia(this._addPeer(payload.client_id, false), true);
        break;
      case "offer":
      case "answer":
      case "candidate":
        this._onSignal(message.type, payload);
        break;
      case "leave-client":
        this._removePeer(payload.client_id);
        break;
      case "error":
        if (payload.code === "resume_failed") this._resumeFailed(payload);
        else this._emit("error", payload);
        break;
      case "server-message":
        this._emit("server-message", payload);
        break;
    }
  }

  _onClientId(payload) {
    const resumed = payload.resumed === true && this._resuming;
    if (!resumed && this._resuming) {
      this._resumeFailed({ code: "resume_failed", message: "the server started a new session" });
    }
    this._id = payload.client_id;
    this._resumeToken = this.resume && payload.resume_token ? payload.resume_token : null;
    this._emit("open", { id: this._id, resumed });
    if (!resumed) {
      if (this._room !== null) this._sendJoin();
      return;
    }
    const outbox = this._outbox;
    this._outbox = [];
    for (const { type, payload: sent } of outbox) this._send(type, sent);
    this._emit("resumed", { id: this._id });
    for (const peer of this._peers.values()) this._checkIce(peer, DISCONNECTED_RESTART_MS);
  }

  // Away no more: what the session kept is gone, peers and all.
  _resumeFailed(payload) {
    if (!this._resuming) return;
    this._forgetSession();
    this._dropPeers();
    this._emit("resume-failed", { code: payload.code, message: payload.message });
  }

  // After a resume: restart ICE if it failed, or if still `disconnected`
  // after `wait` ms (null: now); only while connected to the server, since
  // the restart's offer must reach the peer.
  _checkIce(peer, wait) {
    const pc = peer.pc;
    if (this._peers.get(peer.id) !== peer || this._id === null) return;
    const ice = pc.iceConnectionState;
    if (pc.connectionState === "failed" || ice === "failed") pc.restartIce();
    else if (ice === "disconnected" && wait === null) pc.restartIce();
    else if (ice === "disconnected") setTimeout(() => this._checkIce(peer, null), wait);
  }

  _addPeer(id, polite) {
    const existing = this._peers.get(id);
    if (existing) return existing;
    const pc = this._peerConnection();
    const peer = {
      id,
      pc,
      polite,
      offers: 0,
      makingOffer: false,
      ignoreOffer: false,
      mediaAdded: false,
      senders: new Map(),
      stream: new MediaStream(),
      queue: Promise.resolve(),
    };
    this._peers.set(id, peer);
    pc.onicecandidate = ({ candidate }) => {
      if (this.trickle && candidate && candidate.candidate) {
        this._send("candidate", { client_id: id, candidate: candidate.toJSON() });
      }
    };
    pc.onnegotiationneeded = () => this._offer(peer);
    pc.ontrack = ({ track }) => {
      peer.stream.addTrack(track);
      this._emit("stream", { id, stream: peer.stream, track });
    };
    pc.onconnectionstatechange = () => {
      if (this._peers.get(id) !== peer) return;
      this._emit("peer-state", { id, state: pc.connectionState });
      // Away from the server the offer would wait: the resume checks again.
      if (pc.connectionState === "failed" && this._id !== null) pc.restartIce();
    };
    this._emit("peer-joined", { id });
    return peer;
  }

  // A configuration the browser refuses (a bad URL from a webhook, say) is
  // reported, and the peer connection made without the server's ICE servers.
  _peerConnection() {
    const config = this.rtcConfig;
    try {
      return new RTCPeerConnection(config);
    } catch (err) {
      if (this._serverIceServers === null || config.iceServers !== this._serverIceServers) throw err;
      this._emit("error", {
        code: "bad_ice_servers",
        message: `the ICE servers from the server were refused: ${err}`,
      });
      return new RTCPeerConnection({ ...config, iceServers: [] });
    }
  }

  _removePeer(id) {
    const peer = this._peers.get(id);
    if (!peer) return;
    this._peers.delete(id);
    peer.pc.close();
    this._emit("peer-left", { id });
  }

  _dropPeers() {
    for (const id of [...this._peers.keys()]) this._removePeer(id);
  }

  // The offering side adds receive-only transceivers for media it lacks, so
  // it can watch without a camera; the answering side reuses the offered ones.
  _addLocalMedia(peer, offering) {
    if (peer.mediaAdded) return;
    peer.mediaAdded = true;
    for (const kind of KINDS) {
      const track = this.stream?.getTracks().find((t) => t.kind === kind);
      if (track) {
        const sender = peer.pc.addTrack(track, this.stream);
        peer.senders.set(kind, sender);
        if (this._paused.has(kind)) sender.replaceTrack(null).catch(() => {});
      } else if (offering) peer.pc.addTransceiver(kind, { direction: "recvonly" });
    }
  }

  async _offer(peer) {
    const pc = peer.pc;
    const attempt = ++peer.offers;
    try {
      peer.makingOffer = true;
      await pc.setLocalDescription();
      if (!this.trickle) await this._gathered(pc);
      // While gathering, a polite peer may have rolled back to answer a
      // colliding offer, and a newer offer may have replaced this one.
      if (attempt !== peer.offers || pc.signalingState !== "have-local-offer") return;
      this._send("offer", { client_id: peer.id, sdp: pc.localDescription.sdp });
    } catch (err) {
      this._negotiationFailed(peer, err);
    } finally {
      if (attempt === peer.offers) peer.makingOffer = false;
    }
  }

  // Offers, answers and candidates of one peer are handled strictly in order.
  _onSignal(type, payload) {
    const id = payload.client_id;
    // An offer from someone we have not seen means they were there first.
    const peer = this._peers.get(id) ?? (type === "offer" ? this._addPeer(id, true) : null);
    if (!peer) return;
    const step = type === "candidate" ? () => this._onCandidate(peer, payload.candidate)
      : () => this._onDescription(peer, type, payload.sdp);
    peer.queue = peer.queue.then(step).catch((err) => this._negotiationFailed(peer, err));
  }

  async _onDescription(peer, type, sdp) {
    const pc = peer.pc;
    if (pc.signalingState === "closed") return;
    const collision = type === "offer" && (peer.makingOffer || pc.signalingState !== "stable");
    peer.ignoreOffer = !peer.polite && collision;
    if (peer.ignoreOffer) return;
    if (type === "answer" && pc.signalingState !== "have-local-offer") return; // stale
    await pc.setRemoteDescription({ type, sdp });
    if (type !== "offer") return;
    this._addLocalMedia(peer, false);
    await pc.setLocalDescription();
    if (!this.trickle) await this._gathered(pc);
    if (pc.signalingState === "closed") return;
    this._send("answer", { client_id: peer.id, sdp: pc.localDescription.sdp });
  }

  async _onCandidate(peer, candidate) {
    if (!candidate) return;
    const init = typeof candidate === "string" ? { candidate, sdpMLineIndex: 0 } : candidate;
    try {
      await peer.pc.addIceCandidate(init);
    } catch (err) {
      if (!peer.ignoreOffer && peer.pc.signalingState !== "closed") throw err;
    }
  }

  _gathered(pc) {
    if (pc.iceGatheringState === "complete") return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        pc.removeEventListener("icegatheringstatechange", check);
        resolve();
      };
      const check = () => {
        if (pc.iceGatheringState === "complete") done();
      };
      const timer = setTimeout(done, this.gatherTimeout);
      pc.addEventListener("icegatheringstatechange", check);
    });
  }

  _negotiationFailed(peer, err) {
    if (this._peers.get(peer.id) !== peer) return; // already gone
    this._emit("error", {
      code: "negotiation_failed",
      message: `negotiation with ${peer.id} failed: ${err}`,
      client_id: peer.id,
    });
  }
}

/**
 * The /connect URL of the server that served `pageUrl` (ws: or wss:), with
 * `?token=` (URL-encoded) when `options.token` is given: the room token the
 * server checks at `join` when the join payload has none. The client's
 * `token` option is the more private way: a URL ends up in logs.
 */
export function connectUrl(pageUrl = location.href, options = {}) {
  const url = new URL("connect", pageUrl);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  url.search = options.token ? `?token=${encodeURIComponent(options.token)}` : "";
  url.hash = "";
  return url.href;
}
