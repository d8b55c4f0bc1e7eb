// The desktop over noVNC: RFB through the gate's relay
// (`/sessions/{id}/vnc?ticket=…`). noVNC is loaded only when this path is
// used, so it does not count against the page's first load. noVNC handles
// keyboard, pointer and scaling itself; `resizeSession` asks the desktop
// to take the view's size (RFB SetDesktopSize); the clipboard goes both
// ways as RFB cut text.

import { api, socketUrl } from "../api";
import { type DesktopConnection, type DesktopStats, MAX_CLIPBOARD_CHARS, type ViewCallbacks } from "./connection";

const CONNECT_TIMEOUT_MS = 15_000;

export async function connectVnc(
  container: HTMLElement,
  sessionId: string,
  callbacks: ViewCallbacks,
): Promise<DesktopConnection> {
  const [{ default: RFB }, ticket] = await Promise.all([
    import("@novnc/novnc"),
    api.ticket(sessionId, "vnc"),
  ]);
  const screen = document.createElement("div");
  screen.className = "desktop-vnc";
  screen.setAttribute("aria-label", "Remote desktop");
  container.replaceChildren(screen);
  const rfb = new RFB(screen, socketUrl(`/sessions/${sessionId}/vnc?ticket=${encodeURIComponent(ticket.ticket)}`), {
    wsProtocols: ["binary"],
    shared: true,
  });
  rfb.scaleViewport = true;
  rfb.resizeSession = true;
  rfb.addEventListener("clipboard", (e) => {
    callbacks.onClipboard((e as CustomEvent<{ text: string }>).detail.text);
  });
  rfb.focusOnClick = true;
  rfb.background = "#111";

  let connected = false;
  let closedByUs = false;
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("noVNC did not connect in time")), CONNECT_TIMEOUT_MS);
    rfb.addEventListener("connect", () => {
      clearTimeout(timer);
      connected = true;
      resolve();
    });
    rfb.addEventListener("disconnect", () => {
      clearTimeout(timer);
      if (!connected) {
        reject(new Error("noVNC could not connect"));
      } else if (!closedByUs) {
        callbacks.onClosed("network");
      }
      connected = false;
    });
  });

  return {
    path: "vnc",
    async stats(): Promise<DesktopStats> {
      const canvas = screen.querySelector("canvas");
      return { width: canvas?.width, height: canvas?.height };
    },
    focus: () => rfb.focus(),
    sendClipboard: (text) => rfb.clipboardPasteFrom(text.slice(0, MAX_CLIPBOARD_CHARS)),
    // noVNC positions its pointer absolutely; it is not captured.
    lockPointer: () => {},
    close() {
      closedByUs = true;
      rfb.disconnect();
      screen.remove();
    },
  };
}
