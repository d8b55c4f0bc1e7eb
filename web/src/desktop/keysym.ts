// Browser keyboard events to X11 keysyms, the keys both media paths send.
//
// The keysym comes from `KeyboardEvent.key` (what the user's layout
// produced: "é" on a French keyboard, "ß" on a German one), so non-US
// layouts type what they show as far as keysyms reach; keys without a
// character (arrows, F-keys, modifiers) come from `code`/`key` names. A key
// is released with the keysym it was pressed with, whatever the modifiers
// did in between (see KeyTracker).

/** Keys named by `KeyboardEvent.code`, where left and right differ. */
const BY_CODE: Record<string, number> = {
  ShiftLeft: 0xffe1,
  ShiftRight: 0xffe2,
  ControlLeft: 0xffe3,
  ControlRight: 0xffe4,
  AltLeft: 0xffe9,
  AltRight: 0xffea,
  MetaLeft: 0xffeb, // Super_L
  MetaRight: 0xffec, // Super_R
  OSLeft: 0xffeb,
  OSRight: 0xffec,
  NumpadEnter: 0xff8d,
};

/** Keys named by `KeyboardEvent.key`. */
const BY_KEY: Record<string, number> = {
  Backspace: 0xff08,
  Tab: 0xff09,
  Enter: 0xff0d,
  Pause: 0xff13,
  ScrollLock: 0xff14,
  Escape: 0xff1b,
  Delete: 0xffff,
  Home: 0xff50,
  ArrowLeft: 0xff51,
  ArrowUp: 0xff52,
  ArrowRight: 0xff53,
  ArrowDown: 0xff54,
  PageUp: 0xff55,
  PageDown: 0xff56,
  End: 0xff57,
  PrintScreen: 0xff61,
  Insert: 0xff63,
  ContextMenu: 0xff67,
  NumLock: 0xff7f,
  CapsLock: 0xffe5,
  Shift: 0xffe1,
  Control: 0xffe3,
  Alt: 0xffe9,
  Meta: 0xffeb,
  AltGraph: 0xfe03, // ISO_Level3_Shift
  Compose: 0xff20, // Multi_key
};

/**
 * The keysym for a key event, or undefined for keys that have none (dead
 * keys, "Unidentified", IME composition).
 */
export function keysym(event: Pick<KeyboardEvent, "key" | "code">): number | undefined {
  const byCode = BY_CODE[event.code];
  if (byCode !== undefined) return byCode;
  const { key } = event;
  const named = BY_KEY[key];
  if (named !== undefined) return named;
  const f = /^F([1-9]|1[0-9]|2[0-4])$/.exec(key);
  if (f) return 0xffbe + Number(f[1]) - 1; // F1 = 0xffbe … F24
  const chars = [...key];
  if (chars.length !== 1) return undefined; // "Dead", "Unidentified", names
  const codepoint = chars[0].codePointAt(0)!;
  // Latin-1 keysyms are the codepoints; the rest of Unicode is 0x01000000 + U.
  if ((codepoint >= 0x20 && codepoint <= 0x7e) || (codepoint >= 0xa0 && codepoint <= 0xff)) {
    return codepoint;
  }
  if (codepoint < 0x20 || (codepoint >= 0x7f && codepoint < 0xa0)) return undefined;
  return 0x01000000 + codepoint;
}

/**
 * Remembers which keysym each physical key was pressed with, so that its
 * release sends the same one, and releases everything still held when the
 * view loses focus (else the remote desktop sees a stuck Ctrl).
 */
export class KeyTracker {
  private held = new Map<string, number>();

  /** The keysym to press for `event`, remembered by its `code`. */
  down(event: Pick<KeyboardEvent, "key" | "code">): number | undefined {
    const sym = keysym(event);
    if (sym !== undefined) this.held.set(event.code || event.key, sym);
    return sym;
  }

  /** The keysym to release for `event`: the one it was pressed with. */
  up(event: Pick<KeyboardEvent, "key" | "code">): number | undefined {
    const id = event.code || event.key;
    const sym = this.held.get(id) ?? keysym(event);
    this.held.delete(id);
    return sym;
  }

  /** Every keysym still held, forgotten as it is returned. */
  releaseAll(): number[] {
    const all = [...this.held.values()];
    this.held.clear();
    return all;
  }
}
