// A session's events socket (`/sessions/{id}/events`): state, queue
// position and ETA, balance, low-credit and idle warnings, live. While it is open
// it also proves to the gate that someone is watching. It reconnects when
// the network drops (the cookie signs it in again) until the session ends.

import { type EndReason, type SessionState, socketUrl } from "./api";

export type SessionEvent =
  | { type: "state"; state: SessionState; reason: EndReason; queue_position?: number | null; eta_seconds?: number | null }
  | { type: "queue"; position: number; eta_seconds: number | null }
  | { type: "balance"; credit_seconds: number; billed_credit_seconds: number }
  | { type: "low_credit"; seconds_left: number }
  | { type: "idle_warning"; seconds_left: number }
  | { type: "lagged"; missed: number };

/** Follows one session's events until it ends or `close` is called. */
export class SessionEvents {
  private socket?: WebSocket;
  private closed = false;
  private retry?: ReturnType<typeof setTimeout>;

  constructor(
    private readonly sessionId: string,
    private readonly onEvent: (event: SessionEvent) => void,
    /** Told when the socket drops and when it is back. */
    private readonly onConnected: (connected: boolean) => void = () => {},
  ) {
    this.open(0);
  }

  private open(attempt: number): void {
    if (this.closed) return;
    const socket = new WebSocket(socketUrl(`/sessions/${this.sessionId}/events`));
    this.socket = socket;
    let ended = false;
    socket.onopen = () => {
      attempt = 0;
      this.onConnected(true);
    };
    socket.onmessage = (message) => {
      let event: SessionEvent;
      try {
        event = JSON.parse(String(message.data));
      } catch {
        return;
      }
      if (event.type === "state" && event.state === "ended") ended = true;
      this.onEvent(event);
    };
    socket.onclose = () => {
      if (this.closed || ended) return;
      this.onConnected(false);
      // 1 s, 2 s, 4 s … at most 15 s between tries.
      const wait = Math.min(15_000, 1000 * 2 ** Math.min(attempt, 4));
      this.retry = setTimeout(() => this.open(attempt + 1), wait);
    };
  }

  close(): void {
    this.closed = true;
    clearTimeout(this.retry);
    this.socket?.close();
  }
}
