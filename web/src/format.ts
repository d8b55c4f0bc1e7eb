// How the page writes time and money. Credit is integer credit-seconds: one
// GPU for one second. Amounts are integer base units (wei, token units),
// kept as bigint and never as floating point.

/** "3 h 12 min", "12 min", "45 s": whole units, rounded down. */
export function duration(seconds: number): string {
  const s = Math.max(0, Math.floor(seconds));
  if (s < 60) return `${s} s`;
  const minutes = Math.floor(s / 60);
  if (minutes < 60) return `${minutes} min`;
  const hours = Math.floor(minutes / 60);
  const rest = minutes % 60;
  return rest === 0 ? `${hours} h` : `${hours} h ${rest} min`;
}

/** A countdown clock: "1:02:05", "2:05", "0:09". */
export function clock(seconds: number): string {
  const s = Math.max(0, Math.floor(seconds));
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const sec = String(s % 60).padStart(2, "0");
  return h > 0 ? `${h}:${String(m).padStart(2, "0")}:${sec}` : `${m}:${sec}`;
}

/** Credit as time on `gpus` GPUs: "3 h 12 min on 1 GPU". */
export function creditAsTime(creditSeconds: number, gpus: number): string {
  const n = Math.max(1, gpus);
  return `${duration(creditSeconds / n)} on ${n} GPU${n === 1 ? "" : "s"}`;
}

/**
 * Base units as a decimal with `decimals` places, trailing zeros cut and at
 * most `shown` fraction digits: 1500000000000000n, 18 → "0.0015".
 */
export function units(amount: bigint, decimals: number, shown = 6): string {
  const negative = amount < 0n;
  const abs = negative ? -amount : amount;
  const base = 10n ** BigInt(decimals);
  const whole = abs / base;
  let fraction = (abs % base).toString().padStart(decimals, "0").slice(0, shown);
  fraction = fraction.replace(/0+$/, "");
  const text = fraction ? `${whole}.${fraction}` : `${whole}`;
  return negative ? `-${text}` : text;
}

/** A transaction hash or address shortened for display: 0x1234…abcd. */
export function short(hex: string): string {
  return hex.length > 12 ? `${hex.slice(0, 6)}…${hex.slice(-4)}` : hex;
}
