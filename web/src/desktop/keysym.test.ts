import { describe, expect, it } from "vitest";
import { KeyTracker, keysym } from "./keysym";

describe("keysyms", () => {
  it("maps printable ASCII and Latin-1 to their codepoints", () => {
    expect(keysym({ key: "a", code: "KeyA" })).toBe(0x61);
    expect(keysym({ key: "A", code: "KeyA" })).toBe(0x41);
    expect(keysym({ key: " ", code: "Space" })).toBe(0x20);
    expect(keysym({ key: "é", code: "Digit2" })).toBe(0xe9); // French layout
    expect(keysym({ key: "ß", code: "Minus" })).toBe(0xdf); // German layout
  });

  it("maps the rest of Unicode to 0x01000000 + codepoint", () => {
    expect(keysym({ key: "€", code: "KeyE" })).toBe(0x010020ac);
    expect(keysym({ key: "ж", code: "Semicolon" })).toBe(0x01000436);
    expect(keysym({ key: "😀", code: "" })).toBe(0x0101f600);
  });

  it("names control keys, F-keys and left/right modifiers", () => {
    expect(keysym({ key: "Enter", code: "Enter" })).toBe(0xff0d);
    expect(keysym({ key: "Enter", code: "NumpadEnter" })).toBe(0xff8d);
    expect(keysym({ key: "Escape", code: "Escape" })).toBe(0xff1b);
    expect(keysym({ key: "ArrowLeft", code: "ArrowLeft" })).toBe(0xff51);
    expect(keysym({ key: "F1", code: "F1" })).toBe(0xffbe);
    expect(keysym({ key: "F12", code: "F12" })).toBe(0xffc9);
    expect(keysym({ key: "Shift", code: "ShiftLeft" })).toBe(0xffe1);
    expect(keysym({ key: "Shift", code: "ShiftRight" })).toBe(0xffe2);
    expect(keysym({ key: "Control", code: "ControlRight" })).toBe(0xffe4);
    expect(keysym({ key: "AltGraph", code: "AltRight" })).toBe(0xffea);
    expect(keysym({ key: "AltGraph", code: "" })).toBe(0xfe03);
    expect(keysym({ key: "Meta", code: "MetaLeft" })).toBe(0xffeb);
  });

  it("has none for dead keys and unknown names", () => {
    expect(keysym({ key: "Dead", code: "BracketLeft" })).toBeUndefined();
    expect(keysym({ key: "Unidentified", code: "" })).toBeUndefined();
    expect(keysym({ key: "\u0007", code: "" })).toBeUndefined();
  });

  it("releases a key with the keysym it was pressed with", () => {
    const keys = new KeyTracker();
    expect(keys.down({ key: "Shift", code: "ShiftLeft" })).toBe(0xffe1);
    expect(keys.down({ key: "A", code: "KeyA" })).toBe(0x41);
    // Shift released first: the key now reads "a", but A was pressed.
    expect(keys.up({ key: "Shift", code: "ShiftLeft" })).toBe(0xffe1);
    expect(keys.up({ key: "a", code: "KeyA" })).toBe(0x41);
    keys.down({ key: "Control", code: "ControlLeft" });
    expect(keys.releaseAll()).toEqual([0xffe3]);
    expect(keys.releaseAll()).toEqual([]);
  });
});
