//! Unit tests of the EIP-4361 parser in [`super`]: the EIP's own example,
//! one refusal per broken rule, the length limits, and property tests that
//! parsing never panics and that what is accepted renders back exactly.

use super::*;
use proptest::prelude::*;

/// The full example message of EIP-4361, with every optional field.
const FULL: &str = "https://example.com wants you to sign in with your Ethereum account:
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
- https://example.com/my-web2-claim.json";

/// The shortest form: no scheme, no statement, no optional lines.
const MINIMAL: &str = "example.com wants you to sign in with your Ethereum account:
0xC02aaA39b223FE8D0A0e5C4F27eAD9083C756Cc2


URI: https://example.com
Version: 1
Chain ID: 31337
Nonce: abcdEFGH1234
Issued At: 2021-09-30T16:25:24Z";

#[test]
fn parses_every_field_of_a_full_message() {
    let m = SiweMessage::parse(FULL).unwrap();
    assert_eq!(m.scheme.as_deref(), Some("https"));
    assert_eq!(m.domain, "example.com");
    assert_eq!(
        m.address.to_checksum(None),
        "0xC02aaA39b223FE8D0A0e5C4F27eAD9083C756Cc2"
    );
    assert_eq!(
        m.statement.as_deref(),
        Some("I accept the ExampleOrg Terms of Service: https://example.com/tos")
    );
    assert_eq!(m.uri, "https://example.com/login");
    assert_eq!(m.chain_id, 1);
    assert_eq!(m.nonce, "32891756");
    assert_eq!(m.issued_at.as_str(), "2021-09-30T16:25:24Z");
    let not_before = m.not_before.as_ref().unwrap();
    assert_eq!(
        not_before.instant(),
        "2021-09-30T14:25:24Z".parse::<DateTime<Utc>>().unwrap()
    );
    assert_eq!(m.request_id.as_deref(), Some("some_id-1"));
    assert_eq!(m.resources.len(), 2);
    assert_eq!(m.to_string(), FULL, "renders back byte for byte");
}

#[test]
fn parses_the_minimal_form() {
    let m = SiweMessage::parse(MINIMAL).unwrap();
    assert_eq!(m.scheme, None);
    assert_eq!(m.statement, None);
    assert_eq!(m.expiration_time, None);
    assert!(m.resources.is_empty());
    assert_eq!(m.to_string(), MINIMAL);
    m.validate().unwrap();
}

fn replaced(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "{from} not in the sample");
    text.replacen(from, to, 1)
}

fn err(text: &str) -> SiweError {
    SiweMessage::parse(text).expect_err("must be refused")
}

#[test]
fn refuses_each_broken_rule_with_its_own_reason() {
    use SiweError::*;
    let cases: Vec<(String, SiweError)> = vec![
        (format!("{FULL}{}", " ".repeat(4096)), TooLong { max: 4096 }),
        (
            FULL.replace('\n', "\r\n"),
            InvalidCharacter {
                offset: FULL.find('\n').unwrap(),
            },
        ),
        (
            replaced(FULL, "Terms", "Térms"),
            InvalidCharacter {
                offset: FULL.find("Terms").unwrap() + 1,
            },
        ),
        (replaced(FULL, "wants you", "want you"), BadHeader),
        (
            replaced(
                FULL,
                "https://example.com wants",
                "ht_tp://example.com wants",
            ),
            InvalidScheme,
        ),
        (
            replaced(FULL, "example.com wants", "exa/mple.com wants"),
            InvalidDomain,
        ),
        (replaced(FULL, "example.com wants", " wants"), InvalidDomain),
        (
            replaced(FULL, "example.com wants", "example.com:80x wants"),
            InvalidDomain,
        ),
        (
            replaced(
                FULL,
                "0xC02aaA39b223FE8D0A0e5C4F27eAD9083C756Cc2",
                "0xC02aaA39b223FE8D0A0e5C4F27eAD9083C756Cc",
            ),
            InvalidAddress,
        ),
        (
            replaced(
                FULL,
                "0xC02aaA39b223FE8D0A0e5C4F27eAD9083C756Cc2",
                "0xc02aaa39b223fe8d0a0e5c4f27ead9083c756cc2",
            ),
            AddressChecksum,
        ),
        (
            replaced(FULL, "Cc2\n\n", "Cc2\nx\n"),
            ExpectedBlankLine { line: 3 },
        ),
        (
            replaced(FULL, "tos\n\n", "tos\nmore\n"),
            ExpectedBlankLine { line: 5 },
        ),
        (replaced(FULL, "I accept", "I \"accept\""), InvalidStatement),
        (
            replaced(FULL, "URI: ", "Uri: "),
            ExpectedField {
                line: 6,
                prefix: "URI: ",
            },
        ),
        (
            replaced(FULL, "Version: 1", "Version: 2"),
            UnsupportedVersion,
        ),
        (
            replaced(FULL, "Chain ID: 1", "Chain ID: 01"),
            InvalidChainId,
        ),
        (
            replaced(FULL, "Chain ID: 1", "Chain ID: 99999999999999999999"),
            InvalidChainId,
        ),
        (
            replaced(FULL, "Nonce: 32891756", "Nonce: 3289175"),
            InvalidNonce,
        ),
        (
            replaced(FULL, "Nonce: 32891756", "Nonce: 32891756-"),
            InvalidNonce,
        ),
        (
            replaced(
                FULL,
                "Issued At: 2021-09-30T16:25:24Z",
                "Issued At: 2021-09-30 16:25:24Z",
            ),
            InvalidTimestamp {
                field: "issued-at time",
            },
        ),
        (
            replaced(FULL, "2021-10-01T16:25:24.000Z", "tomorrow"),
            InvalidTimestamp {
                field: "expiration time",
            },
        ),
        (
            replaced(FULL, "https://example.com/login", "example.com/login"),
            InvalidUri { field: "uri" },
        ),
        (
            replaced(
                FULL,
                "- https://example.com/my",
                "- https://example.com/ my",
            ),
            InvalidUri { field: "resource" },
        ),
        (replaced(FULL, "some_id-1", "some/id"), InvalidRequestId),
        (
            replaced(
                FULL,
                "Resources:\n- ipfs://bafybeiemxf5abjwjbikoz4mc3a3dla6ual3jsgpdr4cjr3oz3evfyavhwq/\n- https://example.com/my-web2-claim.json",
                "Resources:",
            ),
            EmptyResources,
        ),
        (format!("{FULL}\n"), UnexpectedLine { line: 17 }),
        (format!("{FULL}\nExtra: 1"), UnexpectedLine { line: 17 }),
        (
            MINIMAL.lines().take(8).collect::<Vec<_>>().join("\n"),
            Truncated {
                expected: "Issued At: ",
            },
        ),
        (
            // Not Before before Expiration Time: out of order.
            replaced(
                FULL,
                "Expiration Time: 2021-10-01T16:25:24.000Z\nNot Before: 2021-09-30T16:25:24+02:00",
                "Not Before: 2021-09-30T16:25:24+02:00\nExpiration Time: 2021-10-01T16:25:24.000Z",
            ),
            UnexpectedLine { line: 12 },
        ),
    ];
    for (text, expected) in cases {
        assert_eq!(err(&text), expected, "for:\n{text}");
    }
}

#[test]
fn length_limits_hold() {
    let long_domain = format!("{}.org", "a".repeat(252));
    assert_eq!(
        err(&MINIMAL.replacen("example.com wants", &format!("{long_domain} wants"), 1)),
        SiweError::FieldTooLong {
            field: "domain",
            max: MAX_DOMAIN_BYTES
        }
    );
    assert_eq!(
        err(&replaced(FULL, "I accept", &"x".repeat(513))),
        SiweError::FieldTooLong {
            field: "statement",
            max: MAX_STATEMENT_BYTES
        }
    );
    let resources: String = (0..17)
        .map(|i| format!("\n- https://example.com/{i}"))
        .collect();
    assert_eq!(
        err(&format!("{MINIMAL}\nResources:{resources}")),
        SiweError::TooManyResources { max: MAX_RESOURCES }
    );
    let nonce = "N".repeat(65);
    assert_eq!(
        err(&MINIMAL.replacen("abcdEFGH1234", &nonce, 1)),
        SiweError::InvalidNonce
    );
    assert!(SiweMessage::parse(&MINIMAL.replacen("abcdEFGH1234", &"N".repeat(64), 1)).is_ok());
}

#[test]
fn domains_may_carry_ports_and_ip_literals() {
    for domain in [
        "localhost:3000",
        "127.0.0.1:8080",
        "[::1]:8443",
        "user@host.org",
    ] {
        let text = MINIMAL.replacen("example.com wants", &format!("{domain} wants"), 1);
        assert_eq!(SiweMessage::parse(&text).unwrap().domain, domain);
    }
    for domain in ["[::1", "[::1]x", "a:b:c", "a@b@c"] {
        let text = MINIMAL.replacen("example.com wants", &format!("{domain} wants"), 1);
        assert_eq!(err(&text), SiweError::InvalidDomain, "{domain}");
    }
}

#[test]
fn validate_catches_built_messages_that_do_not_read_back() {
    let mut m = SiweMessage::parse(MINIMAL).unwrap();
    m.statement = Some(String::new());
    assert!(m.validate().is_err(), "an empty statement is ambiguous");
    m.statement = Some("two\nlines".into());
    assert!(m.validate().is_err());
    m.statement = Some("Sign in to deskgate".into());
    m.validate().unwrap();
}

fn uri() -> impl Strategy<Value = String> {
    (
        prop_oneof![Just("https"), Just("http"), Just("ipfs"), Just("urn")],
        "[a-z]{1,10}(\\.[a-z]{2,4})?(:[0-9]{1,5})?",
        "(/[A-Za-z0-9._~%!$&'()*+,;=:@-]{0,10}){0,3}",
    )
        .prop_map(|(scheme, host, path)| format!("{scheme}://{host}{}", path.replace('%', "%2F")))
}

fn timestamp() -> impl Strategy<Value = Timestamp> {
    // Years 0000 to 9999: what RFC 3339 can write.
    (-62_167_219_200i64..253_402_300_799, 0u32..1_000_000_000).prop_map(|(secs, nanos)| {
        Timestamp::from(DateTime::from_timestamp(secs, nanos).unwrap_or_default())
    })
}

prop_compose! {
    fn message()(
        scheme in proptest::option::of("[a-z][a-z0-9+.-]{0,8}"),
        domain in "[a-z0-9-]{1,20}(\\.[a-z]{2,6})?(:[0-9]{1,5})?",
        address in any::<[u8; 20]>(),
        statement in proptest::option::of("[A-Za-z0-9 .,!?'()*+;=:/@#$&~_\\[\\]-]{1,100}"),
        uri in uri(),
        chain_id in any::<u64>(),
        nonce in "[A-Za-z0-9]{8,64}",
        issued_at in timestamp(),
        expiration_time in proptest::option::of(timestamp()),
        not_before in proptest::option::of(timestamp()),
        request_id in proptest::option::of("[A-Za-z0-9._~!$&'()*+,;=:@-]{0,40}"),
        resources in proptest::collection::vec(uri(), 0..5),
    ) -> SiweMessage {
        SiweMessage {
            scheme, domain, address: Address::from(address), statement, uri,
            version: Version::V1, chain_id, nonce, issued_at, expiration_time,
            not_before, request_id, resources,
        }
    }
}

proptest! {
    #[test]
    fn parse_never_panics_on_arbitrary_text(text in "\\PC{0,600}") {
        let _ = SiweMessage::parse(&text);
    }

    #[test]
    fn parse_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = SiweMessage::parse(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn valid_messages_round_trip(m in message()) {
        let text = m.to_string();
        prop_assert_eq!(SiweMessage::parse(&text), Ok(m.clone()));
        prop_assert!(m.validate().is_ok());
    }

    /// Mutated valid messages: never a panic, and whatever is still
    /// accepted renders back to exactly the text that was parsed.
    #[test]
    fn accepted_text_renders_back_exactly(
        m in message(),
        at in any::<prop::sample::Index>(),
        cut in 0usize..8,
        insert in "[\\x20-\\x7e\\n]{0,4}",
    ) {
        let mut text = m.to_string();
        let start = at.index(text.len());
        let end = (start + cut).min(text.len());
        text.replace_range(start..end, &insert);
        if let Ok(parsed) = SiweMessage::parse(&text) {
            prop_assert_eq!(parsed.to_string(), text);
        }
    }
}
