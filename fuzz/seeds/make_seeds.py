#!/usr/bin/env python3
"""Writes the committed seed corpora under fuzz/seeds/<target>/.

Each seed is a real, valid example of what the target parses, taken from the
project's own tests and sources (named beside each one below), so the fuzzer
starts from inputs that get past every check. Run it from anywhere; it
rewrites the seeds it knows and leaves other files (crash reproducers added
by hand) alone. Only the Python standard library is used.
"""

import json
import pathlib
import struct
import zlib

SEEDS = pathlib.Path(__file__).resolve().parent


def write(target, name, data):
    folder = SEEDS / target
    folder.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    (folder / name).write_bytes(data)


# ------------------------------------------------------------------ siwe
# src/auth/siwe/tests.rs: FULL (EIP-4361's own example) and MINIMAL.
write("siwe", "eip4361_full", """https://example.com wants you to sign in with your Ethereum account:
0xC02aaA39b223FE8D0A0e5C4F27eAD9083C756Cc2

I accept the ExampleOrg Terms of Service: https://example.com/tos

URI: https://example.com/login
Version: 1
Chain ID: 1
Nonce: 32891756
Issued At: 2021-09-30T16:25:24Z
Expiration Time: 2021-10-01T16:25:24.000Z
Not Before: 2021-09-30T16:25:24+02:00
Request ID: some_id-1
Resources:
- ipfs://bafybeiemxf5abjwjbikoz4mc3a3dla6ual3jsgpdr4cjr3oz3evfyavhwq/
- https://example.com/my-web2-claim.json""")
write("siwe", "minimal", """example.com wants you to sign in with your Ethereum account:
0xC02aaA39b223FE8D0A0e5C4F27eAD9083C756Cc2


URI: https://example.com
Version: 1
Chain ID: 31337
Nonce: abcdEFGH1234
Issued At: 2021-09-30T16:25:24Z""")
# What the gate issues (src/auth/sign_in.rs `message`): scheme, STATEMENT, a
# 22-character nonce, an expiration time; anvil's first account.
write("siwe", "gate_challenge", """http://127.0.0.1:8080 wants you to sign in with your Ethereum account:
0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266

Sign in to deskgate

URI: http://127.0.0.1:8080/
Version: 1
Chain ID: 31337
Nonce: Q7bT2kXw9ZpL4mN8vR1sYc
Issued At: 2026-01-15T10:20:30.123456789Z
Expiration Time: 2026-01-15T10:25:30.123456789Z""")

# ------------------------------------------------------------------ rfb_browser
# Byte 0: the limit (64 << 14 = 1 MiB, the relay's default); byte 1: the
# chunk seed; then the browser's side: version, security None, ClientInit.
def browser(version, after_version, messages, limit=14, seed=7):
    return bytes([limit, seed]) + version + after_version + bytes([1]) + messages


pointer = bytes([5, 1, 0, 10, 0, 20])  # media/src/rfb.rs tests
key = bytes([4, 1, 0, 0, 0, 0, 0, 0x61])
request = bytes([3, 1, 0, 0, 0, 0, 0, 8, 0, 8])
set_pixel_format = bytes([0, 0, 0, 0, 32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0, 0, 0, 0])
# noVNC's usual SetEncodings: Tight, ZRLE, Hextile, RRE, Raw, CopyRect and
# pseudo-encodings (cursor, DesktopSize, ExtendedDesktopSize, fence, QEMU key ...).
novnc_encodings = [7, 16, 5, 2, 0, 1, -239, -223, -308, -312, -313, -258, -261, -224, -307, 0x574D5664, -247]
set_encodings = bytes([2, 0]) + struct.pack(">H", len(novnc_encodings)) + b"".join(
    struct.pack(">i", e) for e in novnc_encodings)
cut = bytes([6, 0, 0, 0, 0, 0, 0, 3]) + b"abc"
extended_cut = bytes([6, 0, 0, 0]) + struct.pack(">i", -8) + bytes([0, 0, 0, 1, 0, 0, 0, 0])
fence = bytes([248, 0, 0, 0, 0, 0, 0, 0, 2, 7, 7])
qemu_key = bytes([255, 0, 0, 1]) + struct.pack(">II", 0xFF0D, 0x1C)
set_desktop_size = bytes([251, 0, 0x05, 0x00, 0x02, 0xD0, 1, 0,
                          0, 0, 0, 7, 0, 0, 0, 0, 0x05, 0x00, 0x02, 0xD0, 0, 0, 0, 0])
continuous = bytes([150, 1, 0, 0, 0, 0, 0x05, 0x00, 0x02, 0xD0])
xvp = bytes([252, 0, 1, 2])
session = (set_pixel_format + set_encodings + request + pointer * 3 + key + request
           + cut + extended_cut + fence + qemu_key + set_desktop_size + continuous + xvp + pointer)
write("rfb_browser", "novnc_3_8", browser(b"RFB 003.008\n", bytes([1]), session))
write("rfb_browser", "rfb_3_7", browser(b"RFB 003.007\n", bytes([1]), set_encodings + request + pointer + key))
write("rfb_browser", "rfb_3_3", browser(b"RFB 003.003\n", b"", request + key + pointer * 2))
write("rfb_browser", "small_limit", browser(b"RFB 003.008\n", bytes([1]), pointer + key + cut, limit=0, seed=200))

# ------------------------------------------------------------------ rfb_desktop
# Byte 0: bit 0 set when the stream starts with the handshake. Messages as
# media/src/rfb_client.rs's tests build them.
def server_init(width, height, name):
    return (struct.pack(">HH", width, height)
            + bytes([16, 16, 1, 1, 0, 31, 0, 63, 0, 31, 11, 5, 0, 0, 0, 0])
            + struct.pack(">I", len(name)) + name)


def update(rects):
    out = bytes([0, 0]) + struct.pack(">H", len(rects))
    for (x, y, w, h), encoding, payload in rects:
        out += struct.pack(">HHHHi", x, y, w, h, encoding) + payload
    return out


class ZlibStream:
    """The server's one zlib stream: each payload sync-flushed, length first."""

    def __init__(self):
        self.z = zlib.compressobj()

    def zrle(self, tiles):
        data = self.z.compress(bytes(tiles)) + self.z.flush(zlib.Z_SYNC_FLUSH)
        return struct.pack(">I", len(data)) + data


def cpixel(rgb):
    return bytes([rgb & 0xFF, (rgb >> 8) & 0xFF, (rgb >> 16) & 0xFF])


RAW, COPY_RECT, ZRLE, DESKTOP_SIZE, EXTENDED_DESKTOP_SIZE = 0, 1, 16, -223, -308

raw_payload = b"".join(bytes([0x99, y * 16, x * 16, 0xEE]) for y in range(4) for x in range(3))
z = ZlibStream()
# A 70x70 rectangle: tiles 64x64 (packed palette of 16, 4 bits), 6x64 (raw),
# 64x6 (packed palette of 2, 1 bit) and 6x6 (plain RLE).
tiles = [16] + [b for c in range(16) for b in cpixel(c * 0x0F0F0F)]
tiles += [(2 * x % 16) << 4 | (2 * x + 1 + y) % 16 for y in range(64) for x in range(32)]
tiles += [0] + [b for y in range(64) for x in range(6) for b in cpixel((x << 16) | (y << 8) | 0x42)]
tiles += [2] + list(cpixel(0xFF0000)) + list(cpixel(0x00FF00)) + [0x55] * (8 * 6)
tiles += [128] + list(cpixel(0xA0B0C0)) + [0] + list(cpixel(0x102030)) + [34]
zrle_big = z.zrle(tiles)
# A 4x4 tile in palette RLE of 3 (one pixel, then a run of 15) and one in a
# packed palette of 5 (4 bits), on the same stream.
tiles2 = [131] + list(cpixel(1)) + list(cpixel(2)) + list(cpixel(3)) + [0x01, 0x82, 14]
zrle_small = z.zrle(tiles2)
tiles3 = [5] + [b for c in (1, 2, 3, 4, 5) for b in cpixel(c)] + [0x01, 0x23] * 4
zrle_packed = z.zrle(tiles3)

messages = (bytes([2])  # Bell
            + bytes([3, 0, 0, 0, 0, 0, 0, 4]) + b"caf\xe9"  # ServerCutText, Latin-1
            + update([((5, 2, 3, 4), RAW, raw_payload)])
            + update([((1, 1, 3, 3), COPY_RECT, struct.pack(">HH", 0, 0))])
            + update([((0, 0, 70, 70), ZRLE, zrle_big),
                      ((10, 10, 4, 4), ZRLE, zrle_small),
                      ((20, 20, 4, 4), ZRLE, zrle_packed)])
            + update([((0, 0, 40, 30), EXTENDED_DESKTOP_SIZE,
                       bytes([1, 0, 0, 0, 1, 2, 3, 4, 0, 0, 0, 0, 0, 40, 0, 30, 0, 0, 0, 0]))])
            + update([((0, 0, 100, 80), DESKTOP_SIZE, b"")]))
init = server_init(100, 80, b"deskgate")
handshake_3_8 = b"RFB 003.008\n" + bytes([2, 1, 2]) + bytes(range(16)) + struct.pack(">I", 0)
handshake_3_7_none = b"RFB 003.007\n" + bytes([1, 1])
handshake_3_3 = b"RFB 003.003\n" + struct.pack(">I", 2) + bytes([0x5A] * 16) + struct.pack(">I", 0)
refused = b"RFB 003.008\n" + bytes([0]) + struct.pack(">I", 3) + b"bad"
auth_failed = b"RFB 003.008\n" + bytes([1, 2]) + bytes([1] * 16) + struct.pack(">II", 1, 4) + b"nope"
write("rfb_desktop", "session_after_auth", bytes([0]) + init + messages)
write("rfb_desktop", "vnc_auth_3_8", bytes([1]) + handshake_3_8 + init + messages)
write("rfb_desktop", "none_3_7", bytes([1]) + handshake_3_7_none + init + update([((0, 0, 2, 2), RAW, bytes(16))]))
write("rfb_desktop", "vnc_auth_3_3", bytes([1]) + handshake_3_3 + init + bytes([2, 2]))
write("rfb_desktop", "refused", bytes([1]) + refused)
write("rfb_desktop", "auth_failed", bytes([1]) + auth_failed)
write("rfb_desktop", "colour_map", bytes([0]) + server_init(8, 8, b"x") + bytes([1, 0, 0, 0, 0, 1]) + bytes(6))

# ------------------------------------------------------------------ webrtc_input
# media/src/input.rs's doc and tests; web/src/desktop/webrtc.ts sends these.
for name, event in [
    ("pointer", {"type": "pointer", "x": 321, "y": 123, "buttons": 1}),
    ("pointer_no_buttons", {"type": "pointer", "x": 1, "y": 2}),
    ("key", {"type": "key", "keysym": 65505, "down": True}),
    ("clipboard", {"type": "clipboard", "text": "caf\u00e9 \u20ac \"quoted\"\n"}),
    ("resize", {"type": "resize", "width": 1126, "height": 720}),
]:
    write("webrtc_input", name, json.dumps(event, separators=(",", ":"), ensure_ascii=False))

# ------------------------------------------------------------------ launch_spec
# tests/launcher_service.rs and src/launcher/remote/wire.rs's tests.
session = "6c5f8a1e-2b7d-4c3a-9e1f-0a2b3c4d5e6f"
for name, body in [
    ("launch", {"session": session, "host": 0, "gpu_indices": [0, 1]}),
    ("launch_no_gpu", {"session": session, "host": 3, "gpu_indices": []}),
    ("privileged", {"session": session, "host": 0, "gpu_indices": [0], "privileged": True,
                    "binds": ["/:/host"]}),
    ("gpu_twice", {"session": session, "host": 0, "gpu_indices": [1, 1]}),
    ("launch_response", {"container_id": "3f9a1c2b4d5e"}),
    ("container_view", {"session": session, "container_id": "3f9a1c2b4d5e", "host": 1}),
    ("exit_event", {"session": session, "code": 137, "oom": True, "at_ms": 1760000000000}),
    ("webrtc_offer", {"offer": "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n",
                      "ice_servers": [{"urls": ["turn:127.0.0.1:3478?transport=udp"],
                                       "username": "1760000000:s", "credential": "c2VjcmV0"}]}),
    ("report_refused", {"type": "refused", "refusal": "bad_offer", "detail": "no VP8"}),
    ("report_counts", {"type": "counts", "keys": 3, "pointer": 40, "bytes_up": 900,
                       "bytes_down": 123456}),
    ("report_ended", {"type": "ended", "reason": "desktop", "ice_failure": "no_pair"}),
]:
    write("launch_spec", name, json.dumps(body, separators=(",", ":")))

# ------------------------------------------------------------------ config
# src/config/raw.rs's tests, and a file setting every key of src/config/keys.rs.
# Byte 0 picks the role: each file is written for `serve` (0) and `launcher` (1).
def write_config(name, text):
    write("config", f"{name}_serve", b"\0" + text.encode())
    write("config", f"{name}_launcher", b"\1" + text.encode())


write_config("raw_tests",
      'bind = "127.0.0.1:9000"\nchain_id = 31337\nconfirmations = 3\n'
      'launcher_urls = ["http://a:1", "http://b:2"]\n')
strong = "9f2c4e1ab37d58e06c9b1f4a2d7e3c8b5a6f0e1d2c3b4a59687766554433221f"
write_config("every_key", f'''bind = "127.0.0.1:8080"
allow_public_bind = false
public_url = "https://desk.example.org"
tls_cert = "/etc/deskgate/fullchain.pem"
tls_key = "/etc/deskgate/privkey.pem"
database_url = "postgres://deskgate:pw@127.0.0.1:5432/deskgate"
migrate_on_start = true
rpc_url = "http://127.0.0.1:8545"
chain_id = 31337
wallet_rpc_url = "https://rpc.example.org"
revenue_address = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"
token_address = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
confirmations = 12
price_wei_per_gpu_hour = "1000000000000000"
price_token_per_gpu_hour = "1000000000000000000"
tiers = "1000e18:10,10000e18:25"
chain_poll_millis = 2000
deposit_start_block = 0
token_ttl_seconds = 86400
admin_token = "{strong}"
launcher_urls = ["https://gpu1.example.org:8090", "https://gpu2.example.org:8090"]
launcher_token = "{strong}"
launcher_bind = "127.0.0.1:8090"
launcher_host = 0
session_image = "deskgate/desktop@sha256:4f2c4e1ab37d58e06c9b1f4a2d7e3c8b5a6f0e1d2c3b4a59687766554433221f"
session_memory_mib = 4096
session_cpus = 2
session_pids_limit = 512
session_env_allowlist = ["LANG", "TZ"]
session_stop_grace_seconds = 10
gpus = "0,1"
billing_interval_seconds = 10
presence_timeout_seconds = 60
idle_timeout_seconds = 1800
metrics_addr = "127.0.0.1:9100"
turn_urls = ["turn:turn.example.org:3478?transport=udp", "stun:turn.example.org:3478"]
turn_secret = "{strong}"
webrtc_udp_ip = "0.0.0.0"
webrtc_max_fps = 30
webrtc_bitrate_kbps = 6000
webrtc_max_bitrate_kbps = 12000
webrtc_encoder = "vp8"
webrtc_public_ips = "203.0.113.7"
trusted_proxies = "10.0.0.0/8,fd00::/8"
docs_enabled = false
log_format = "json"
max_body_bytes = 65536
request_timeout_seconds = 30
http_header_timeout_seconds = 10
http_max_header_bytes = 16384
max_connections_per_client = 128
max_connections = 4096
sign_in_rate_per_minute = 10
sign_in_rate_burst = 5
claim_rate_per_minute = 30
claim_rate_burst = 10
shutdown_grace_seconds = 3
''')
# A file plus a stand-in environment after a NUL byte (src/config/testing.rs's env).
write_config("file_and_env",
      'chain_id = 31337\ngpus = "fake:2"\n\0'
      'DESKGATE_DATABASE_URL=postgres://u:pw@127.0.0.1:5432/d\n'
      'DESKGATE_RPC_URL=http://127.0.0.1:8545\n'
      f'DESKGATE_LAUNCHER_TOKEN={strong}\nDESKGATE_CONFIRMATIONS=5\nDESKGATE_TLS_CERT= \n')
write_config("unknown_key", 'bnid = "127.0.0.1:9000"\n')
