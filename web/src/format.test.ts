import { describe, expect, it } from "vitest";
import { clock, creditAsTime, duration, short, units } from "./format";

describe("time", () => {
  it("writes durations in whole units, rounded down", () => {
    expect(duration(0)).toBe("0 s");
    expect(duration(59.9)).toBe("59 s");
    expect(duration(60)).toBe("1 min");
    expect(duration(3599)).toBe("59 min");
    expect(duration(3600)).toBe("1 h");
    expect(duration(11_520)).toBe("3 h 12 min");
    expect(duration(-5)).toBe("0 s");
  });

  it("writes credit as time on a profile's GPUs", () => {
    expect(creditAsTime(11_520, 1)).toBe("3 h 12 min on 1 GPU");
    expect(creditAsTime(11_520, 4)).toBe("48 min on 4 GPUs");
    expect(creditAsTime(100, 0)).toBe("1 min on 1 GPU");
  });

  it("counts down as a clock", () => {
    expect(clock(9)).toBe("0:09");
    expect(clock(125)).toBe("2:05");
    expect(clock(3725)).toBe("1:02:05");
  });
});

describe("money", () => {
  it("writes base units as decimals without floating point", () => {
    expect(units(1_500_000_000_000_000n, 18)).toBe("0.0015");
    expect(units(10n ** 18n, 18)).toBe("1");
    expect(units(123_456_789_012_345_678_901n, 18)).toBe("123.456789");
    expect(units(0n, 18)).toBe("0");
    expect(units(-5n, 0)).toBe("-5");
  });

  it("shortens hashes", () => {
    expect(short("0x1234567890abcdef")).toBe("0x1234…cdef");
    expect(short("0x12")).toBe("0x12");
  });
});
