// The desktop over WebRTC: a recvonly VP8 video track and an `input` data
// channel of JSON pointer, key, clipboard and resize events (the gate's
// protocol, see the README); the gate sends the desktop's clipboard back on
// it. The desktop is asked to take the view's size, and again whenever the
// view changes size. The offer is sent once ICE gathering is done (no trickle); a
// path that is not connected within CONNECT_TIMEOUT_MS fails, so that the
// caller can fall back to noVNC.

import { api } from "../api";
import { type DesktopConnection, type DesktopStats, MAX_CLIPBOARD_CHARS, type ViewCallbacks } from "./connection";
import { KeyTracker } from "./keysym";

const GATHER_TIMEOUT_MS = 3000;
/** The largest desktop the gate's video path takes. */
const MAX_SIZE = [3840, 2160];
/** Resizes wait for the view to settle this long. */
const RESIZE_SETTLE_MS = 300;
const CONNECT_TIMEOUT_MS = 15_000;
/** How long a "disconnected" connection may take to heal by itself. */
const DISCONNECTED_GRACE_MS = 4000;

/** RFB button-mask bits of the wheel: up and down. */
const WHEEL_UP = 1 << 3;
const WHEEL_DOWN = 1 << 4;

function gathered(pc: RTCPeerConnection): Promise<void> {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      if (pc.iceGatheringState === "complete") {
        pc.removeEventListener("icegatheringstatechange", done);
        resolve();
      }
    };
    pc.addEventListener("icegatheringstatechange", done);
    // Send what was gathered by then: the gate's candidates and
    // peer-reflexive ones still connect.
    setTimeout(resolve, GATHER_TIMEOUT_MS);
  });
}

/** RFB's button mask from `MouseEvent.buttons` (left 1, middle 2, right 4). */
function mask(buttons: number): number {
  return (buttons & 1) | ((buttons & 4) >> 1) | ((buttons & 2) << 1);
}

export async function connectWebrtc(
  container: HTMLElement,
  sessionId: string,
  callbacks: ViewCallbacks,
): Promise<DesktopConnection> {
  const ticket = await api.ticket(sessionId, "webrtc");
  const pc = new RTCPeerConnection({ iceServers: ticket.ice_servers ?? [] });
  pc.addTransceiver("video", { direction: "recvonly" });
  const input = pc.createDataChannel("input");
  const video = document.createElement("video");
  video.autoplay = true;
  video.muted = true;
  video.playsInline = true;
  video.className = "desktop-video";
  video.setAttribute("aria-label", "Remote desktop");
  pc.ontrack = (event) => {
    video.srcObject = event.streams[0] ?? new MediaStream([event.track]);
  };

  let closedByUs = false;
  const fail = (cause: "network" | "ended") => {
    if (closedByUs) return;
    closedByUs = true;
    teardown();
    callbacks.onClosed(cause);
  };

  try {
    await pc.setLocalDescription(await pc.createOffer());
    await gathered(pc);
    const answer = await api.webrtc(sessionId, ticket.ticket, pc.localDescription!.sdp);
    await pc.setRemoteDescription({ type: "answer", sdp: answer.sdp });
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error("WebRTC did not connect in time")), CONNECT_TIMEOUT_MS);
      const check = () => {
        if (pc.connectionState === "connected") {
          clearTimeout(timer);
          resolve();
        } else if (pc.connectionState === "failed" || pc.connectionState === "closed") {
          clearTimeout(timer);
          reject(new Error(`WebRTC ${pc.connectionState}`));
        }
      };
      pc.addEventListener("connectionstatechange", check);
      check();
    });
  } catch (e) {
    pc.close();
    throw e;
  }

  container.replaceChildren(video);
  // "disconnected" may heal by itself; one that lasts is a dropped network,
  // answered with a new connection (and a fresh ticket).
  let disconnected: ReturnType<typeof setTimeout> | undefined;
  pc.addEventListener("connectionstatechange", () => {
    clearTimeout(disconnected);
    if (pc.connectionState === "failed" || pc.connectionState === "closed") fail("network");
    if (pc.connectionState === "disconnected") disconnected = setTimeout(() => fail("network"), DISCONNECTED_GRACE_MS);
  });
  input.addEventListener("close", () => fail("network"));
  input.addEventListener("message", (e) => {
    try {
      const message = JSON.parse(String(e.data));
      if (message.type === "clipboard" && typeof message.text === "string") callbacks.onClipboard(message.text);
    } catch {
      // Not ours to read.
    }
  });

  const send = (event: object) => {
    if (input.readyState === "open") input.send(JSON.stringify(event));
  };

  // Pointer: browser coordinates to desktop pixels, minding the letterbox
  // that object-fit: contain leaves around the picture.
  let buttons = 0;
  // Where the desktop's pointer is; moved by relative motion while the
  // browser's pointer is locked (fullscreen), by position otherwise.
  let at = { x: 0, y: 0 };
  const position = (e: MouseEvent) => {
    const rect = video.getBoundingClientRect();
    const w = video.videoWidth || rect.width;
    const h = video.videoHeight || rect.height;
    const scale = Math.min(rect.width / w, rect.height / h);
    const clamp = (v: number, max: number) => Math.min(Math.max(v, 0), max - 1);
    if (document.pointerLockElement === video) {
      at = { x: clamp(at.x + e.movementX / scale, w), y: clamp(at.y + e.movementY / scale, h) };
    } else {
      const left = rect.left + (rect.width - w * scale) / 2;
      const top = rect.top + (rect.height - h * scale) / 2;
      // The desktop pixel under the pointer: floor, not round.
      at = { x: clamp(Math.floor((e.clientX - left) / scale), w), y: clamp(Math.floor((e.clientY - top) / scale), h) };
    }
    return { x: Math.floor(at.x), y: Math.floor(at.y) };
  };
  const pointer = (e: MouseEvent) => {
    e.preventDefault();
    buttons = mask(e.buttons);
    send({ type: "pointer", ...position(e), buttons });
  };
  const wheel = (e: WheelEvent) => {
    e.preventDefault();
    const bit = e.deltaY < 0 ? WHEEL_UP : WHEEL_DOWN;
    const at = position(e);
    send({ type: "pointer", ...at, buttons: buttons | bit });
    send({ type: "pointer", ...at, buttons });
  };
  const keys = new KeyTracker();
  const key = (down: boolean) => (e: KeyboardEvent) => {
    const keysym = down ? keys.down(e) : keys.up(e);
    if (keysym === undefined) return;
    e.preventDefault();
    send({ type: "key", keysym, down });
  };
  const blur = () => {
    for (const keysym of keys.releaseAll()) send({ type: "key", keysym, down: false });
  };
  const keydown = key(true);
  const keyup = key(false);
  const menu = (e: Event) => e.preventDefault();
  container.tabIndex = 0;
  video.addEventListener("pointermove", pointer);
  video.addEventListener("pointerdown", (e) => {
    container.focus();
    pointer(e);
  });
  video.addEventListener("pointerup", pointer);
  video.addEventListener("wheel", wheel, { passive: false });
  video.addEventListener("contextmenu", menu);
  container.addEventListener("keydown", keydown);
  container.addEventListener("keyup", keyup);
  container.addEventListener("blur", blur);

  // The desktop takes the view's size (whole CSS pixels), now and on change.
  let resizeTimer: ReturnType<typeof setTimeout> | undefined;
  let asked = "";
  const askSize = () => {
    const width = Math.min(Math.floor(container.clientWidth), MAX_SIZE[0]);
    const height = Math.min(Math.floor(container.clientHeight), MAX_SIZE[1]);
    const size = `${width}x${height}`;
    if (width < 1 || height < 1 || size === asked) return;
    asked = size;
    send({ type: "resize", width, height });
  };
  const observer = new ResizeObserver(() => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(askSize, RESIZE_SETTLE_MS);
  });
  observer.observe(container);
  // The channel may open after the connection: ask once it can carry it.
  if (input.readyState === "open") askSize();
  else input.addEventListener("open", askSize, { once: true });

  function teardown() {
    clearTimeout(disconnected);
    observer.disconnect();
    clearTimeout(resizeTimer);
    container.removeEventListener("keydown", keydown);
    container.removeEventListener("keyup", keyup);
    container.removeEventListener("blur", blur);
    pc.close();
    video.srcObject = null;
    video.remove();
  }

  // getStats() counters are totals: keep the last ones for rates.
  let last: { at: number; bytes: number; frames: number } | undefined;
  return {
    path: "webrtc",
    async stats(): Promise<DesktopStats> {
      const report = await pc.getStats();
      const out: DesktopStats = { width: video.videoWidth, height: video.videoHeight };
      report.forEach((s) => {
        if (s.type === "inbound-rtp" && s.kind === "video") {
          const now = s.timestamp as number;
          if (last && now > last.at) {
            const seconds = (now - last.at) / 1000;
            out.kbps = Math.round(((s.bytesReceived - last.bytes) * 8) / 1000 / seconds);
            out.fps = Math.round((s.framesDecoded - last.frames) / seconds);
          }
          last = { at: now, bytes: s.bytesReceived ?? 0, frames: s.framesDecoded ?? 0 };
          const expected = (s.packetsReceived ?? 0) + (s.packetsLost ?? 0);
          if (expected > 0) out.lossPercent = Math.round((1000 * (s.packetsLost ?? 0)) / expected) / 10;
        }
        if (s.type === "candidate-pair" && s.nominated && s.currentRoundTripTime !== undefined) {
          out.rttMs = Math.round(s.currentRoundTripTime * 1000);
        }
      });
      return out;
    },
    focus: () => container.focus(),
    sendClipboard: (text) => send({ type: "clipboard", text: text.slice(0, MAX_CLIPBOARD_CHARS) }),
    lockPointer: () => {
      // Not every browser returns a promise; a refused lock is no error.
      Promise.resolve(video.requestPointerLock()).catch(() => {});
    },
    close() {
      closedByUs = true;
      blur();
      teardown();
    },
  };
}
