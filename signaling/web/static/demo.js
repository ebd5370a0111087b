// The demo video room: camera preview, one tile per remote peer, controls.
// Room from the URL (?room=abc or #abc), else a new random one.
// ?trickle=0 sends candidates inside the SDP instead of trickling them.
// ?token=T or #token=T (a room token) is sent in the join payload, not on
// the connect URL, and removed from the address bar and history at once, so
// it is not bookmarked, shared or left in logs. A fragment with `token=` is
// read as parameters (#token=T, #room=abc&token=T), never as the room.
// ICE servers: the ones the server sends in `joined`, if any.

import { SignalingClient, connectUrl } from "./signaling-client.js";

const $ = (id) => document.getElementById(id);
const tiles = $("tiles");
const micButton = $("toggle-mic");
const cameraButton = $("toggle-camera");
const leaveButton = $("leave");
const params = new URLSearchParams(location.search);
const fragment = new URLSearchParams(location.hash.slice(1));
const fragmentHasToken = fragment.has("token");
const token = params.get("token") || fragment.get("token") || null;
// A remote tile that has shown no new frame for this long shows the peer's
// placeholder instead of a black or frozen picture.
const STALLED_MS = 1000;
const COPIED_MS = 2000;

function chooseRoom() {
  const fromHash = fragmentHasToken ? fragment.get("room") : decodeURIComponent(location.hash.slice(1));
  let room = params.get("room") || fromHash;
  if (!room) {
    const bytes = crypto.getRandomValues(new Uint8Array(6));
    room = Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }
  // The address bar keeps the room but never the token: a fragment with a
  // token goes, and its room (or a new random one) moves to ?room=.
  let changed = params.has("token") || fragmentHasToken;
  const hash = fragmentHasToken ? "" : location.hash;
  if (!params.get("room") && !hash) {
    params.set("room", room);
    changed = true;
  }
  if (changed) {
    params.delete("token");
    const query = String(params) ? `?${params}` : "";
    history.replaceState(null, "", `${location.pathname}${query}${hash}`);
  }
  return room;
}

function showStatus(text, kind = "warn") {
  const status = $("status");
  status.textContent = text;
  status.className = `status ${kind}`;
  status.hidden = !text;
}

// Statuses by topic, so a fixed problem clears only its own message.
const problems = new Map();
function setProblem(topic, text, kind = "warn") {
  if (text) problems.set(topic, { text, kind });
  else problems.delete(topic);
  const shown = [...problems.values()];
  const worst = shown.find((p) => p.kind === "error") ?? shown[0];
  showStatus(shown.map((p) => p.text).join(" "), worst?.kind);
}

async function openCamera() {
  if (!navigator.mediaDevices?.getUserMedia) {
    setProblem("camera", "This page needs HTTPS (or localhost) to use the camera; you can still watch others.");
    return null;
  }
  try {
    return await navigator.mediaDevices.getUserMedia({
      audio: true,
      video: { width: { ideal: 1280 }, height: { ideal: 720 } },
    });
  } catch (err) {
    const why = {
      NotAllowedError: "Camera and microphone access was denied.",
      NotFoundError: "No camera or microphone was found.",
      NotReadableError: "The camera or microphone is in use by another application.",
    }[err.name] ?? `The camera could not be opened (${err.message || err.name}).`;
    setProblem("camera", `${why} You can still see and hear the others; allow access and reload to be seen.`, "error");
    return null;
  }
}

// The circle with an initial that stands in for a peer's video.
function placeholder(initial, hue) {
  const box = document.createElement("div");
  box.className = "placeholder";
  const avatar = document.createElement("span");
  avatar.className = "avatar";
  avatar.textContent = initial;
  if (hue !== undefined) avatar.style.backgroundColor = `hsl(${hue} 45% 38%)`;
  const note = document.createElement("span");
  note.textContent = "No video";
  box.append(avatar, note);
  return box;
}

function tileFor(id) {
  let tile = tiles.querySelector(`[data-peer-id="${CSS.escape(id)}"]`);
  if (!tile) {
    const name = id.slice(0, 6);
    tile = document.createElement("figure");
    tile.className = "tile remote no-video";
    tile.dataset.peerId = id;
    tile.dataset.state = "new";
    const video = document.createElement("video");
    video.autoplay = true;
    video.playsInline = true;
    const caption = document.createElement("figcaption");
    caption.textContent = `Peer ${name}`;
    const initial = (name.match(/[a-z0-9]/i) ?? ["?"])[0].toUpperCase();
    const hue = [...id].reduce((sum, c) => sum + c.charCodeAt(0), 0) % 360;
    tile.append(video, placeholder(initial, hue), caption);
    tiles.append(tile);
  }
  return tile;
}

// Frames decoded per remote tile at the last check, and when that changed.
const frameCounts = new WeakMap();
function checkRemoteVideo() {
  const now = performance.now();
  for (const tile of tiles.querySelectorAll(".tile.remote")) {
    const video = tile.querySelector("video");
    const frames = video.getVideoPlaybackQuality?.().totalVideoFrames ?? 0;
    const seen = frameCounts.get(tile);
    if (!seen || seen.frames !== frames) frameCounts.set(tile, { frames, at: now });
    const live = frames > 0 && now - (frameCounts.get(tile)?.at ?? now) < STALLED_MS;
    tile.classList.toggle("no-video", !live);
  }
}

// Browsers may refuse to autoplay sound; then play muted and offer a button.
function play(tile) {
  const video = tile.querySelector("video");
  video.play().catch(() => {
    video.muted = true;
    video.play().catch(() => {});
    if (tile.querySelector(".unmute")) return;
    const unmute = document.createElement("button");
    unmute.className = "unmute primary";
    unmute.textContent = "Unmute";
    unmute.onclick = () => {
      video.muted = false;
      unmute.remove();
    };
    tile.append(unmute);
  });
}

function bindToggle(button, client, kind, onLabel, offLabel, changed = () => {}) {
  if (!client.isSending(kind)) return;
  button.disabled = false;
  button.onclick = () => {
    const sending = !client.isSending(kind);
    client.setSending(kind, sending);
    button.setAttribute("aria-pressed", String(!sending));
    button.textContent = sending ? onLabel : offLabel;
    changed(sending);
  };
}

async function main() {
  const room = chooseRoom();
  $("room-name").textContent = room;
  const link = `${location.origin}${location.pathname}?room=${encodeURIComponent(room)}`;
  $("room-link").value = link;
  let copiedTimer;
  $("share").onsubmit = async (event) => {
    event.preventDefault();
    try {
      await navigator.clipboard.writeText(link);
      $("copy-link").textContent = "Copied";
      clearTimeout(copiedTimer);
      copiedTimer = setTimeout(() => ($("copy-link").textContent = "Copy link"), COPIED_MS);
    } catch {
      $("room-link").select(); // let the user copy it by hand
    }
  };

  const stream = await openCamera();
  const client = new SignalingClient(connectUrl(location.href), {
    room,
    token,
    stream,
    trickle: params.get("trickle") !== "0",
  });
  window.demo = { client, stream };
  const localTile = $("local-tile");
  if (stream) {
    $("local-video").srcObject = stream;
    bindToggle(micButton, client, "audio", "Mute", "Unmute");
    bindToggle(cameraButton, client, "video", "Camera off", "Camera on", (sending) =>
      localTile.classList.toggle("no-video", !sending),
    );
  }
  localTile.classList.toggle("no-video", !client.isSending("video"));
  setInterval(checkRemoteVideo, STALLED_MS / 4);

  client.addEventListener("open", () => setProblem("server", null));
  client.addEventListener("peer-joined", ({ detail }) => tileFor(detail.id));
  client.addEventListener("peer-left", ({ detail }) => tileFor(detail.id).remove());
  client.addEventListener("stream", ({ detail }) => {
    const tile = tileFor(detail.id);
    const video = tile.querySelector("video");
    if (video.srcObject !== detail.stream) video.srcObject = detail.stream;
    play(tile);
  });
  client.addEventListener("peer-state", ({ detail }) => {
    tileFor(detail.id).dataset.state = detail.state;
  });
  client.addEventListener("disconnected", ({ detail }) => {
    if (detail.retryIn === null) return;
    const seconds = Math.ceil(detail.retryIn / 1000);
    setProblem("server", `Lost the connection to the server; retrying in ${seconds} s…`, "error");
  });
  client.addEventListener("taken-over", () => {
    setProblem("server", "This call continues in another tab or window; reload to rejoin here.", "error");
  });
  client.addEventListener("server-message", ({ detail }) => {
    setProblem("operator", `Message from the server: ${detail.text}`);
  });
  client.addEventListener("error", ({ detail }) => {
    if (detail.code === "server_unreachable") {
      setProblem("server", `Cannot reach the signaling server at ${client.url}; retrying…`, "error");
    } else {
      setProblem(detail.code, `Error: ${detail.message}`, "error");
    }
  });

  leaveButton.onclick = () => {
    if (leaveButton.dataset.left) {
      location.reload();
      return;
    }
    client.close();
    stream?.getTracks().forEach((track) => track.stop());
    $("local-video").srcObject = null;
    localTile.classList.add("no-video");
    micButton.disabled = cameraButton.disabled = true;
    problems.clear();
    showStatus("You left the room.", "info");
    leaveButton.dataset.left = "1";
    leaveButton.textContent = "Rejoin";
    leaveButton.className = "primary";
  };

  client.connect();
}

main();
