// What the page needs of a desktop view, whichever path carries it: WebRTC
// (video + an `input` data channel) or noVNC (RFB over a WebSocket).

/** Live figures for the stats overlay; undefined where a path has none. */
export interface DesktopStats {
  fps?: number;
  /** Received video bitrate, kbit/s. */
  kbps?: number;
  /** Round-trip time to the gate, ms. */
  rttMs?: number;
  /** Packets lost of those expected since the start, in percent. */
  lossPercent?: number;
  width?: number;
  height?: number;
}

export type DesktopPath = "webrtc" | "vnc";

/** Why a view closed: the network dropped, or the desktop went away. */
export type CloseCause = "network" | "ended";

export interface DesktopConnection {
  readonly path: DesktopPath;
  /** Figures since the last call. */
  stats(): Promise<DesktopStats>;
  /** Gives the view the keyboard. */
  focus(): void;
  /** Puts `text` on the desktop's clipboard. */
  sendClipboard(text: string): void;
  /** Captures the browser's pointer (in fullscreen), where the path can. */
  lockPointer(): void;
  close(): void;
}

export interface ViewCallbacks {
  /** The view stopped by itself (not by close()). */
  onClosed(cause: CloseCause): void;
  /** The desktop's clipboard changed. */
  onClipboard(text: string): void;
}

/** The most clipboard text passed on: the gate's limit (64 KiB of Latin-1). */
export const MAX_CLIPBOARD_CHARS = 64 * 1024;
