use super::*;

fn canonical(body: &str, ignored: &[&str]) -> Result<String, CanonicalError> {
    let mut out = Vec::new();
    canonicalize(body.as_bytes(), &IgnoredFields::new(ignored), &mut out)?;
    Ok(String::from_utf8(out).expect("canonical form is UTF-8"))
}

#[test]
fn sorts_members_drops_whitespace_and_respells() {
    assert_eq!(
        canonical(
            r#"{ "b": [1, {"z":1, "a":"x\n"}], "a": null, "c": "\u0041", "d": 1E2 }"#,
            &[]
        )
        .unwrap(),
        r#"{"a":null,"b":[1,{"a":"x\n","z":1}],"c":"A","d":100.0}"#
    );
}

#[test]
fn ignored_fields_at_any_depth_and_only_through_objects() {
    let body =
        r#"{"metadata":{"user_id":"u","keep":1},"a":{"b":{"c":1,"d":2}},"list":[{"user_id":1}]}"#;
    assert_eq!(
        canonical(body, &["metadata.user_id", "a.b.c", "list.user_id"]).unwrap(),
        r#"{"a":{"b":{"d":2}},"list":[{"user_id":1}],"metadata":{"keep":1}}"#
    );
}

#[test]
fn refuses_what_is_not_one_unambiguous_object() {
    assert!(matches!(
        canonical("[1,2]", &[]),
        Err(CanonicalError::NotAnObject)
    ));
    assert!(matches!(
        canonical("{\"a\":", &[]),
        Err(CanonicalError::Invalid(_))
    ));
    assert!(matches!(
        canonical(r#"{"a":1,"b":0,"a":2}"#, &[]),
        Err(CanonicalError::DuplicateMember(name)) if name == "a"
    ));
    let deep = format!("{{\"a\":{}{}}}", "[".repeat(200), "]".repeat(200));
    assert!(matches!(
        canonical(&deep, &[]),
        Err(CanonicalError::TooDeep)
    ));
    let deepest = format!("{{\"a\":{}{}}}", "[".repeat(127), "]".repeat(127));
    assert!(canonical(&deepest, &[]).is_ok());
}

#[test]
fn objects_past_the_counted_size_keep_their_form_and_their_errors() {
    let many = MEMBERS_BEFORE_COUNTING * 2 + 3;
    // Written in reverse, with an ignored member past the count and a
    // nested object so that counting skips whole values.
    let mut body = String::from("{");
    for n in (0..many).rev() {
        body.push_str(&format!("\"k{n:06}\": {{\"v\": [{n}, \"x\"]}}, "));
    }
    body.push_str("\"drop\": 1}");
    let mut expected = String::from("{");
    for n in 0..many {
        if n > 0 {
            expected.push(',');
        }
        expected.push_str(&format!("\"k{n:06}\":{{\"v\":[{n},\"x\"]}}"));
    }
    expected.push('}');
    assert_eq!(canonical(&body, &["drop"]).unwrap(), expected);

    let duplicate = body.replacen("\"drop\": 1", "\"k000001\": 1", 1);
    assert!(matches!(
        canonical(&duplicate, &["drop"]),
        Err(CanonicalError::DuplicateMember(name)) if name == "k000001"
    ));
    let cut = &body[..body.len() - 10];
    assert!(matches!(
        canonical(cut, &[]),
        Err(CanonicalError::Invalid(_))
    ));
    let no_colon = body.replacen("\"drop\": 1", "\"drop\" 1", 1);
    assert!(matches!(
        canonical(&no_colon, &[]),
        Err(CanonicalError::Invalid(_))
    ));
}

#[test]
fn reports_a_streamed_request() {
    let mut sink = Vec::new();
    let facts = canonicalize(
        br#"{"stream":true,"x":{"stream":false}}"#,
        &IgnoredFields::default(),
        &mut sink,
    )
    .unwrap();
    assert!(facts.streamed);
    let facts = canonicalize(
        br#"{"x":{"stream":true}}"#,
        &IgnoredFields::default(),
        &mut sink,
    )
    .unwrap();
    assert!(!facts.streamed);
}

#[test]
fn plain_and_escaped_strings_match_serde() {
    for text in [
        "plain text",
        "quote \" here",
        "back\\slash",
        "tab\tnew\nline",
        "\u{1}",
        "caf\u{e9} \u{1F600}",
    ] {
        let mut ours = Vec::new();
        write_json_string(text, &mut ours);
        assert_eq!(ours, serde_json::to_vec(text).unwrap(), "{text:?}");
    }
}

#[test]
fn plain_integers() {
    for (token, plain) in [
        ("0", true),
        ("-12", true),
        ("-0", false),
        ("007", false),
        ("1.5", false),
        ("1e3", false),
        ("1234567890123456789", false),
    ] {
        assert_eq!(is_plain_integer(token.as_bytes()), plain, "{token}");
    }
}

mod properties {
    use super::*;
    use proptest::prelude::*;
    use serde_json::{Map, Value};

    /// The tree-based canonical form this module replaces: parse into a
    /// `Value`, remove the ignored paths, sort members by key.
    fn tree_form(body: &str, ignored: &[Vec<String>]) -> Vec<u8> {
        fn remove(value: &mut Value, path: &[String]) {
            let Some((last, parents)) = path.split_last() else {
                return;
            };
            let mut current = value;
            for part in parents {
                match current.get_mut(part.as_str()) {
                    Some(next) => current = next,
                    None => return,
                }
            }
            if let Value::Object(map) = current {
                map.remove(last.as_str());
            }
        }
        fn write(value: &Value, out: &mut Vec<u8>) {
            match value {
                Value::Object(map) => {
                    let mut members: Vec<_> = map.iter().collect();
                    members.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
                    out.push(b'{');
                    for (i, (k, v)) in members.into_iter().enumerate() {
                        if i > 0 {
                            out.push(b',');
                        }
                        write_json_string(k, out);
                        out.push(b':');
                        write(v, out);
                    }
                    out.push(b'}');
                }
                Value::Array(items) => {
                    out.push(b'[');
                    for (i, item) in items.iter().enumerate() {
                        if i > 0 {
                            out.push(b',');
                        }
                        write(item, out);
                    }
                    out.push(b']');
                }
                Value::String(text) => write_json_string(text, out),
                scalar => out.extend_from_slice(&serde_json::to_vec(scalar).unwrap()),
            }
        }
        let mut value: Value = serde_json::from_str(body).unwrap();
        for path in ignored {
            remove(&mut value, path);
        }
        let mut out = Vec::new();
        write(&value, &mut out);
        out
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            (-1e6f64..1e6).prop_map(Value::from),
            "[a-c\\\\\"\\n\u{e9}\u{1F600} ]{0,6}".prop_map(Value::String),
        ];
        leaf.prop_recursive(5, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map("[a-d]{0,3}|stream|metadata", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
            ]
        })
    }

    fn json_object() -> impl Strategy<Value = Value> {
        prop::collection::btree_map("[a-d]{0,3}|metadata", json_value(), 0..6)
            .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>()))
    }

    /// Writes `value` as JSON with members in an order and with
    /// whitespace chosen by `seed`, and numbers or strings respelled.
    fn step(seed: &mut u64) -> u64 {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        *seed
    }

    fn spell(value: &Value, seed: &mut u64, out: &mut String) {
        let space = [" ", "", "\n  ", "\t", ""];
        match value {
            Value::Object(map) => {
                let mut members: Vec<_> = map.iter().collect();
                for i in (1..members.len()).rev() {
                    let j = (step(seed) % (i as u64 + 1)) as usize;
                    members.swap(i, j);
                }
                out.push('{');
                for (i, (k, v)) in members.into_iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(space[(step(seed) % 5) as usize]);
                    out.push_str(&serde_json::to_string(k).unwrap());
                    out.push_str(space[(step(seed) % 5) as usize]);
                    out.push(':');
                    spell(v, seed, out);
                }
                out.push_str(space[(step(seed) % 5) as usize]);
                out.push('}');
            }
            Value::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(space[(step(seed) % 5) as usize]);
                    spell(item, seed, out);
                }
                out.push(']');
            }
            Value::String(text) if step(seed).is_multiple_of(2) => {
                // The same string with every character escaped.
                out.push('"');
                for unit in text.encode_utf16() {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
                out.push('"');
            }
            Value::Number(n) if n.is_f64() && step(seed).is_multiple_of(2) => {
                let f = n.as_f64().unwrap_or(0.0);
                out.push_str(&format!("{f:e}"));
            }
            other => out.push_str(&other.to_string()),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn invariant_under_member_order_whitespace_and_spelling(
            value in json_object(),
            seeds in (1u64..u64::MAX, 1u64..u64::MAX),
        ) {
            let (mut a_seed, mut b_seed) = seeds;
            let (mut a, mut b) = (String::new(), String::new());
            spell(&value, &mut a_seed, &mut a);
            spell(&value, &mut b_seed, &mut b);
            let none = IgnoredFields::default();
            let (mut ours_a, mut ours_b) = (Vec::new(), Vec::new());
            canonicalize(a.as_bytes(), &none, &mut ours_a).unwrap();
            canonicalize(b.as_bytes(), &none, &mut ours_b).unwrap();
            prop_assert_eq!(&ours_a, &ours_b, "{} vs {}", a, b);
            prop_assert_eq!(ours_a, tree_form(&a, &[]));
        }

        #[test]
        fn ignored_fields_are_left_out_at_any_depth(
            path in prop::collection::vec("[a-c]{1,2}", 1..8),
            noise in json_value(),
            other in json_value(),
            kept in json_value(),
        ) {
            // {"p1":{"p2":{…{"pN": noise, "kept": kept}}}}
            let build = |leaf: &Value| {
                let mut node = serde_json::json!({ path.last().unwrap(): leaf, "kept!": kept });
                for part in path.iter().rev().skip(1) {
                    node = serde_json::json!({ part: node });
                }
                node.to_string()
            };
            let ignored = IgnoredFields::new(&[path.join(".")]);
            let (mut with_noise, mut with_other) = (Vec::new(), Vec::new());
            canonicalize(build(&noise).as_bytes(), &ignored, &mut with_noise).unwrap();
            canonicalize(build(&other).as_bytes(), &ignored, &mut with_other).unwrap();
            prop_assert_eq!(&with_noise, &with_other);
            prop_assert_eq!(with_noise, tree_form(&build(&noise), std::slice::from_ref(&path)));
        }

        #[test]
        fn arbitrary_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = canonicalize(&body, &IgnoredFields::new(&["a.b"]), std::io::sink());
        }

        #[test]
        fn broken_json_never_panics(value in json_object(), cut in any::<prop::sample::Index>(), byte in any::<u8>()) {
            let mut text = value.to_string().into_bytes();
            let at = cut.index(text.len().max(1));
            if at < text.len() {
                text[at] = byte;
            }
            let _ = canonicalize(&text, &IgnoredFields::default(), std::io::sink());
            let _ = canonicalize(&text[..at.min(text.len())], &IgnoredFields::default(), std::io::sink());
        }
    }
}
