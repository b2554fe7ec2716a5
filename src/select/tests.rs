use super::*;

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn parse(s: &str) -> LabelSelector {
    LabelSelector::parse(s).unwrap_or_else(|e| panic!("{s:?} should parse: {e}"))
}

#[test]
fn every_operator_parses_and_matches_as_kubernetes_does() {
    let web = labels(&[("app", "web"), ("tier", "front")]);
    let db = labels(&[("app", "db")]);
    let none = labels(&[]);
    // (selector, matches web, matches db, matches no labels)
    let table = [
        ("", true, true, true),
        ("app=web", true, false, false),
        ("app==web", true, false, false),
        ("app = web", true, false, false),
        ("app!=web", false, true, true),
        ("app in (web,db)", true, true, false),
        ("app in ( web , db )", true, true, false),
        ("app notin (web)", false, true, true),
        ("tier", true, false, false),
        ("!tier", false, true, true),
        ("app=web,tier=front", true, false, false),
        ("app in (web,db), !tier", false, true, false),
        ("app=", false, false, false),
        ("example.com/role=x", false, false, false),
    ];
    for (selector, w, d, n) in table {
        let s = parse(selector);
        assert_eq!(
            (s.matches(&web), s.matches(&db), s.matches(&none)),
            (w, d, n),
            "{selector:?}"
        );
    }
}

#[test]
fn a_selector_prints_back_in_a_form_that_parses_to_itself() {
    for s in [
        "app=web",
        "app!=web",
        "app in (db,web)",
        "app notin (x)",
        "tier",
        "!tier",
        "a=b,!c,d in (e)",
    ] {
        let parsed = parse(s);
        assert_eq!(parse(&parsed.to_string()), parsed, "{s:?}");
    }
    assert_eq!(parse("app==web , tier").to_string(), "app=web,tier");
}

/// Each bad selector, the column its error names, and a word of the message.
#[test]
fn a_bad_selector_is_refused_with_the_column_of_the_bad_character() {
    let table = [
        ("app in (web", 12, "expected ',' or ')'"),
        ("app in web", 8, "expected '('"),
        ("app in ()", 9, "empty"),
        ("app=web,", 9, "expected a label key"),
        (",app", 1, "expected a label key"),
        ("app=web tier", 9, "expected ',' or the end"),
        ("app>3", 4, "expected '='"),
        ("app = (web)", 7, "expected a value"),
        ("!", 2, "after '!'"),
        ("-app=web", 1, "must begin and end"),
        ("app-=web", 4, "must begin and end"),
        ("app=web-", 8, "must begin and end"),
        ("app=w@b", 6, "found '@'"),
        ("Example.com/app=x", 1, "DNS subdomain"),
        ("example.com/=x", 13, "no name"),
        ("app in (a,b c)", 13, "expected ',' or ')'"),
        ("é=x", 1, "found 'é'"),
    ];
    for (selector, column, words) in table {
        let e = LabelSelector::parse(selector).expect_err(selector);
        assert_eq!(e.column, Some(column), "{selector:?}: {e}");
        assert!(e.message.contains(words), "{selector:?}: {e}");
        let shown = e.to_string();
        assert!(shown.starts_with("label selector"), "{shown}");
        // The caret sits under the column named.
        let caret = shown.lines().last().expect("a caret line");
        assert_eq!(caret.find('^'), Some(2 + column - 1), "{shown}");
    }
    let long = format!("app={}", "v".repeat(64));
    let e = LabelSelector::parse(&long).expect_err("too long");
    assert!(e.message.contains("longer than 63"), "{e}");
}

#[test]
fn regexes_match_the_whole_namespace_or_name() {
    let web = PodMeta::new("u1", "web-1", "prod-eu");
    let other = PodMeta::new("u2", "my-web-1", "prod");
    let s = PodSelector::everything()
        .with_name_regex("web-.*")
        .and_then(|s| s.with_namespace_regex("prod(-.*)?"))
        .expect("valid regexes");
    assert!(s.matches(&web));
    assert!(!s.matches(&other), "a regex matches the whole name");
    let e = PodSelector::everything()
        .with_namespace_regex("prod-(")
        .expect_err("unclosed group");
    assert!(
        e.to_string().starts_with("namespace regex \"prod-(\""),
        "{e}"
    );
}

#[test]
fn the_parts_of_a_pod_selector_combine_with_and() {
    let pod = PodMeta::new("u1", "web-1", "prod").with_label("app", "web");
    let by_label = PodSelector::labels("app=web").expect("valid");
    assert!(by_label.matches(&pod));
    let and_name = by_label.clone().with_name_regex("db-.*").expect("valid");
    assert!(
        !and_name.matches(&pod),
        "the label holds, the name does not"
    );
    let and_ns = by_label.with_namespace_regex("prod").expect("valid");
    assert!(and_ns.matches(&pod));
    assert!(PodSelector::everything().is_everything());
    assert!(!and_ns.is_everything());
}
