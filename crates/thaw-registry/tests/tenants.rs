//! Tenant isolation (issue 2, item 5): thaw in process in front of the fake upstream's token
//! flow, with a public repository and private ones readable by some users only.
//!
//! The centre is a model-based property test: random sequences of requests from anonymous
//! clients, token holders (mode a: the client's own upstream token, forwarded by thaw) and thaw
//! accounts (mode b: Basic auth, mapped to upstream users), for manifests by tag and by digest and
//! for blobs, asked through their own repository's name or through another's, with the upstream
//! going down and coming back. A small model says who may read what; thaw must never serve what
//! the model forbids, and must serve what it allows while the upstream is up. The deterministic
//! tests below it pin the individual rules the model relies on.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use thaw_registry::config::{Account, Credentials};
use thaw_registry::RegistryConfig;
use thaw_testkit::fake_upstream::{FakeImage, FakeUpstream, Fault, Kind};
use thaw_testkit::{filler, upstream, Thaw};

const USERS: [(&str, &str); 3] = [("u1", "pw1"), ("u2", "pw2"), ("u3", "pw3")];
/// Repository 0 is public; 1 is readable by u1; 2 by u1 and u2. u3 reads only the public one.
const REPOS: [&str; 3] = ["pub/base", "priv/a", "priv/b"];
/// thaw accounts (mode b) and the upstream user each maps to.
const ACCOUNTS: [(&str, &str, usize); 3] = [("alice", "apw", 0), ("bob", "bpw", 1), ("carol", "cpw", 2)];

/// The fake upstream with the three repositories, their ACL, and one image each. priv/a's image
/// shares pub/base's first layer (a public base layer under private content, as real images do).
struct World {
    fake: FakeUpstream,
    images: Vec<FakeImage>,
}

fn world(jwt: bool, token_ttl: Duration) -> World {
    let fake = FakeUpstream::start();
    fake.enable_auth(jwt, token_ttl);
    for (u, p) in USERS {
        fake.add_user(u, p);
    }
    fake.make_public(REPOS[0]);
    fake.allow(REPOS[1], "u1");
    fake.allow(REPOS[2], "u1");
    fake.allow(REPOS[2], "u2");
    let base = filler(100, 20_000);
    let images = vec![
        fake.put_image(REPOS[0], "v1", &[base.clone(), filler(101, 15_000)]),
        fake.put_image(REPOS[1], "v1", &[base, filler(111, 15_000)]),
        fake.put_image(REPOS[2], "v1", &[filler(121, 20_000), filler(122, 15_000)]),
    ];
    World { fake, images }
}

fn accounts() -> Vec<Account> {
    ACCOUNTS
        .iter()
        .map(|(name, pw, u)| Account {
            username: name.to_string(),
            password: pw.to_string(),
            upstream: [("fake".to_string(), Credentials { username: USERS[*u].0.into(), password: USERS[*u].1.into() })].into(),
        })
        .collect()
}

fn thaw_for(w: &World, with_accounts: bool, auth_ttl: Duration) -> Thaw {
    let cfg = RegistryConfig {
        upstreams: vec![upstream("fake", &w.fake.url(), true)],
        accounts: if with_accounts { accounts() } else { Vec::new() },
        auth_ttl,
        upstream_timeout: Duration::from_secs(5),
        ..Default::default()
    };
    Thaw::start(cfg)
}

fn http() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder().timeout(Duration::from_secs(30)).build().unwrap()
}

/// Gets a token from the fake's token service as a mode (a) client does after a challenge.
fn upstream_token(c: &reqwest::blocking::Client, fake: &FakeUpstream, user: Option<usize>, repo: &str) -> String {
    let mut req = c.get(fake.realm()).query(&[("service", "fake"), ("scope", &format!("repository:{repo}:pull"))]);
    if let Some(u) = user {
        req = req.basic_auth(USERS[u].0, Some(USERS[u].1));
    }
    let r = req.send().unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().unwrap();
    v["token"].as_str().unwrap().to_string()
}

/// Who sends a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Who {
    Anonymous,
    /// Mode (a): a token from the upstream for this upstream user (`None`: an anonymous token).
    Token(Option<usize>),
    /// Mode (b): this thaw account.
    Account(usize),
}

impl Who {
    fn user(self) -> Option<usize> {
        match self {
            Who::Anonymous | Who::Token(None) => None,
            Who::Token(Some(u)) => Some(u),
            Who::Account(a) => Some(ACCOUNTS[a].2),
        }
    }
}

/// What is asked for.
#[derive(Debug, Clone, Copy)]
enum Obj {
    /// `manifests/v1` of the repository asked through.
    Tag,
    /// Manifest of image `i`, by digest.
    Manifest(usize),
    /// Blob `b` (0 = config, 1.. = layers) of image `i`.
    Blob(usize, usize),
}

#[derive(Debug, Clone)]
enum Op {
    Get { who: Who, via: usize, obj: Obj, head: bool },
    Down,
    Up,
    /// The upstream takes user `u`'s access to private repository `r` (1 or 2) away.
    Revoke { u: usize, r: usize },
    /// Let time pass beyond `auth_ttl`, so remembered grants lapse.
    Sleep,
}

struct Object {
    path: String,
    body: Vec<u8>,
    digest: String,
    /// Repositories the object belongs to upstream.
    owners: BTreeSet<usize>,
}

fn object(w: &World, via: usize, obj: Obj) -> Object {
    let owners_of = |d: &str| -> BTreeSet<usize> {
        w.images
            .iter()
            .enumerate()
            .filter(|(_, im)| im.manifest_digest == d || im.config_digest == d || im.layers.iter().any(|(l, _)| l == d))
            .map(|(i, _)| i)
            .collect()
    };
    match obj {
        Obj::Tag => {
            let im = &w.images[via];
            Object { path: "manifests/v1".into(), body: im.manifest.clone(), digest: im.manifest_digest.clone(), owners: [via].into() }
        }
        Obj::Manifest(i) => {
            let im = &w.images[i];
            Object { path: format!("manifests/{}", im.manifest_digest), body: im.manifest.clone(), digest: im.manifest_digest.clone(), owners: owners_of(&im.manifest_digest) }
        }
        Obj::Blob(i, b) => {
            let im = &w.images[i];
            let (d, body) = if b == 0 { (im.config_digest.clone(), im.config.clone()) } else { im.layers[b - 1].clone() };
            Object { path: format!("blobs/{d}"), owners: owners_of(&d), body, digest: d }
        }
    }
}

fn who_strategy(mode_b: bool) -> BoxedStrategy<Who> {
    let tokens = prop_oneof![Just(Who::Token(None)), (0..3usize).prop_map(|u| Who::Token(Some(u)))];
    if mode_b {
        prop_oneof![1 => Just(Who::Anonymous), 3 => (0..3usize).prop_map(Who::Account), 1 => tokens].boxed()
    } else {
        prop_oneof![1 => Just(Who::Anonymous), 3 => tokens].boxed()
    }
}

fn obj_strategy() -> impl Strategy<Value = Obj> {
    prop_oneof![
        2 => Just(Obj::Tag),
        2 => (0..3usize).prop_map(Obj::Manifest),
        4 => (0..3usize, 0..3usize).prop_map(|(i, b)| Obj::Blob(i, b)),
    ]
}

fn ops_strategy(mode_b: bool) -> impl Strategy<Value = Vec<Op>> {
    // Half the requests come from one identity on one private repository (the case's focus), so
    // sequences like "read, revoke, wait, read again" or "read, outage, read again" are common
    // rather than a lucky draw; the other half roam over everything.
    (who_strategy(mode_b), 1..3usize).prop_flat_map(move |(focus_who, focus_via)| {
        let get = (who_strategy(mode_b), 0..3usize, obj_strategy(), proptest::bool::weighted(0.15))
            .prop_map(|(who, via, obj, head)| Op::Get { who, via, obj, head });
        let own_obj = prop_oneof![Just(Obj::Tag), Just(Obj::Manifest(focus_via)), (0..3usize).prop_map(move |b| Obj::Blob(focus_via, b))];
        let focused = (own_obj, proptest::bool::weighted(0.15)).prop_map(move |(obj, head)| Op::Get { who: focus_who, via: focus_via, obj, head });
        // Revocations of the ACL's actual entries.
        let revoke = prop_oneof![Just((0, 1)), Just((0, 2)), Just((1, 2))].prop_map(|(u, r)| Op::Revoke { u, r });
        proptest::collection::vec(
            prop_oneof![8 => get, 8 => focused, 1 => Just(Op::Down), 1 => Just(Op::Up), 2 => revoke, 2 => Just(Op::Sleep)],
            4..28,
        )
    })
}

/// thaw's `auth_ttl` in the property test: short, so `Op::Sleep` can outlast it cheaply.
const MODEL_AUTH_TTL: Duration = Duration::from_millis(200);

/// When a grant thaw may hold for (identity, repository) lapses, bounded from both sides: the
/// model knows when the granting request was sent and answered, not the instant thaw recorded it.
#[derive(Clone, Copy)]
struct GrantWindow {
    /// Before this, thaw certainly still holds the grant.
    lower: Instant,
    /// After this, thaw certainly does not.
    upper: Instant,
}

/// Runs one sequence against a fresh upstream and thaw, checking every answer against the model.
fn run_case(mode_b: bool, jwt: bool, ops: &[Op]) -> Result<(), TestCaseError> {
    let w = world(jwt, Duration::from_secs(300));
    let thaw = thaw_for(&w, mode_b, MODEL_AUTH_TTL);
    let c = http();
    let mut tokens: HashMap<(Option<usize>, usize), String> = HashMap::new();
    let mut up = true;
    // The upstream's ACL for the private repositories: (user, repo).
    let mut acl: HashSet<(usize, usize)> = [(0, 1), (0, 2), (1, 2)].into();
    let may_read = |acl: &HashSet<(usize, usize)>, user: Option<usize>, repo: usize| repo == 0 || user.is_some_and(|u| acl.contains(&(u, repo)));
    // Grants thaw may remember for private repositories: it may serve cached private content to
    // an identity whose grant has not lapsed even when the upstream would now say no (revoked)
    // or cannot be asked (down); to nobody else.
    let mut grants: HashMap<(Who, usize), GrantWindow> = HashMap::new();
    for (step, op) in ops.iter().enumerate() {
        let (who, via, obj, head) = match op {
            Op::Down => {
                if up {
                    w.fake.go_down();
                    up = false;
                }
                continue;
            }
            Op::Up => {
                if !up {
                    w.fake.come_up();
                    up = true;
                }
                continue;
            }
            Op::Revoke { u, r } => {
                acl.remove(&(*u, *r));
                w.fake.revoke(REPOS[*r], USERS[*u].0);
                continue;
            }
            Op::Sleep => {
                std::thread::sleep(MODEL_AUTH_TTL + Duration::from_millis(50));
                continue;
            }
            Op::Get { who, via, obj, head } => (*who, *via, *obj, *head),
        };
        let o = object(&w, via, obj);
        let url = format!("{}/v2/{}/{}", thaw.url(), REPOS[via], o.path);
        let mut req = if head { c.head(&url) } else { c.get(&url) };
        match who {
            Who::Anonymous => {}
            Who::Token(u) => {
                if !up && !tokens.contains_key(&(u, via)) {
                    // The token service is down too: such a client cannot even ask.
                    continue;
                }
                let t = tokens.entry((u, via)).or_insert_with(|| upstream_token(&c, &w.fake, u, REPOS[via])).clone();
                req = req.bearer_auth(t);
            }
            Who::Account(a) => req = req.basic_auth(ACCOUNTS[a].0, Some(ACCOUNTS[a].1)),
        }
        let sent = Instant::now();
        let resp = req.send().unwrap();
        let status = resp.status().as_u16();
        let digest_hdr = resp.headers().get("docker-content-digest").map(|v| v.to_str().unwrap().to_string());
        let body = resp.bytes().map(|b| b.to_vec()).unwrap_or_default();
        let answered = Instant::now();
        let ctx = format!("step {step}: {who:?} {} {} via {} (up={up}) -> {status}", if head { "HEAD" } else { "GET" }, o.path, REPOS[via]);

        let served = (200..300).contains(&status);
        let belongs = o.owners.contains(&via);
        let readable_now = may_read(&acl, who.user(), via);
        let grant = grants.get(&(who, via)).copied();
        // thaw may still hold a grant when the request was sent.
        let grant_maybe_alive = grant.is_some_and(|g| sent < g.upper);

        if served {
            prop_assert!(belongs, "LEAK: another repository's object through {}: {ctx}", REPOS[via]);
            // Private content: to a reader while the upstream can confirm it, or to an identity
            // whose grant may still be alive (within auth_ttl) — never to anyone else: not to the
            // never-authorised while the upstream is down (fail closed), not to the revoked once
            // their grant lapsed.
            prop_assert!(
                via == 0 || (readable_now && up) || grant_maybe_alive,
                "LEAK: private content without a live grant (readable now: {readable_now}): {ctx}"
            );
            prop_assert_eq!(digest_hdr.as_deref(), Some(o.digest.as_str()), "{}", ctx);
            if !head {
                prop_assert!(body == o.body, "wrong content: {ctx}");
            }
            // Track what thaw may now remember. A served private request either used a live
            // grant or asked the upstream (which renews it); when the model cannot tell, widen.
            if via != 0 && who.user().is_some() && readable_now && up {
                let fresh = GrantWindow { lower: sent + MODEL_AUTH_TTL, upper: answered + MODEL_AUTH_TTL };
                let next = match grant {
                    None => fresh,
                    Some(g) if sent >= g.upper => fresh,
                    Some(g) if answered < g.lower => g,
                    Some(g) => GrantWindow { lower: g.lower, upper: fresh.upper },
                };
                grants.insert((who, via), next);
            }
        } else {
            prop_assert!(head || body != o.body, "LEAK of the body in an error answer: {ctx}");
            if up && readable_now {
                // Readable and the upstream can be asked: refused only as "not found", and only
                // for another repository's object — exactly what the upstream itself says.
                prop_assert!(!belongs, "refused although allowed: {ctx}");
                prop_assert_eq!(status, 404, "{}", ctx);
            }
            if up && !readable_now {
                prop_assert!(matches!(status, 401 | 403 | 404), "{ctx}");
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, max_shrink_iters: 64, ..ProptestConfig::default() })]

    /// No tenant is ever served content the model forbids, in either mode, through outages.
    #[test]
    fn tenant_model_finds_no_leak(
        (mode_b, jwt, ops) in (any::<bool>(), any::<bool>()).prop_flat_map(|(m, j)| (Just(m), Just(j), ops_strategy(m)))
    ) {
        run_case(mode_b, jwt, &ops)?;
    }
}

// ---------------------------------------------------------------------- the rules one by one

fn get(c: &reqwest::blocking::Client, url: &str, auth: Option<&Who>, token: Option<&str>) -> reqwest::blocking::Response {
    let mut r = c.get(url);
    match (auth, token) {
        (_, Some(t)) => r = r.bearer_auth(t),
        (Some(Who::Account(a)), None) => r = r.basic_auth(ACCOUNTS[*a].0, Some(ACCOUNTS[*a].1)),
        _ => {}
    }
    r.send().unwrap()
}

/// Mode (a): thaw relays the upstream's challenge with the repository scope; the token a client
/// gets by following it works through thaw, and only for users the upstream lets in.
#[test]
fn mode_a_relays_the_challenge_and_forwards_the_clients_token() {
    let w = world(false, Duration::from_secs(300));
    let thaw = thaw_for(&w, false, Duration::from_secs(60));
    let c = http();
    let url = format!("{}/v2/{}/manifests/v1", thaw.url(), REPOS[1]);
    let r = get(&c, &url, None, None);
    assert_eq!(r.status(), 401);
    let challenge = r.headers()["www-authenticate"].to_str().unwrap().to_string();
    let parsed = thaw_registry::upstream::parse_bearer_challenge(&challenge).expect("a Bearer challenge");
    assert_eq!(parsed.realm, w.fake.realm(), "{challenge}");
    assert_eq!(parsed.scope.as_deref(), Some("repository:priv/a:pull"));
    let v: serde_json::Value = r.json().unwrap();
    assert_eq!(v["errors"][0]["code"], "UNAUTHORIZED");

    // Follow the challenge as u1 (allowed) and as u2 (not allowed).
    let follow = |user: usize| {
        let r = c
            .get(&parsed.realm)
            .query(&[("service", parsed.service.as_deref().unwrap()), ("scope", parsed.scope.as_deref().unwrap())])
            .basic_auth(USERS[user].0, Some(USERS[user].1))
            .send()
            .unwrap();
        r.json::<serde_json::Value>().unwrap()["token"].as_str().unwrap().to_string()
    };
    let t1 = follow(0);
    let r = get(&c, &url, None, Some(&t1));
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().unwrap().as_ref(), w.images[1].manifest.as_slice());
    assert!(w.fake.log().iter().any(|l| l.method == "GET" && l.path == "/v2/priv/a/manifests/v1" && l.auth.as_deref() == Some("Bearer")));
    let t2 = follow(1);
    let r = get(&c, &url, None, Some(&t2));
    assert_eq!(r.status(), 401, "u2 was served priv/a");
    // A made-up token gets nothing either.
    let r = get(&c, &url, None, Some("not-a-token"));
    assert_eq!(r.status(), 401);
    // Public content needs no token at all.
    let r = get(&c, &format!("{}/v2/{}/manifests/v1", thaw.url(), REPOS[0]), None, None);
    assert_eq!(r.status(), 200);
}

/// Mode (b): thaw's accounts with Basic auth, each mapped to its own upstream user.
#[test]
fn mode_b_accounts_map_to_their_own_upstream_users() {
    let w = world(false, Duration::from_secs(300));
    let thaw = thaw_for(&w, true, Duration::from_secs(60));
    let c = http();
    let url = format!("{}/v2/{}/manifests/v1", thaw.url(), REPOS[2]);
    let r = get(&c, &url, None, None);
    assert_eq!(r.status(), 401);
    assert!(r.headers()["www-authenticate"].to_str().unwrap().starts_with("Basic"), "thaw asks for its own accounts");
    for (a, expect) in [(0usize, 200u16), (1, 200), (2, 401)] {
        let r = get(&c, &url, Some(&Who::Account(a)), None);
        assert_eq!(r.status().as_u16(), expect, "account {}", ACCOUNTS[a].0);
        if expect == 200 {
            assert_eq!(r.bytes().unwrap().as_ref(), w.images[2].manifest.as_slice());
        }
    }
    let r = c.get(&url).basic_auth("alice", Some("wrong")).send().unwrap();
    assert_eq!(r.status(), 401);
    // carol reads the public repository, and the blob alice cached for priv/b stays closed to her.
    let (ld, _) = &w.images[2].layers[0];
    let blob = format!("{}/v2/{}/blobs/{ld}", thaw.url(), REPOS[2]);
    assert_eq!(get(&c, &blob, Some(&Who::Account(0)), None).status(), 200);
    assert_eq!(get(&c, &blob, Some(&Who::Account(2)), None).status(), 401);
    assert_eq!(get(&c, &format!("{}/v2/{}/manifests/v1", thaw.url(), REPOS[0]), Some(&Who::Account(2)), None).status(), 200);
}

/// A private digest asked through a public repository's name: 404, as if it did not exist — for
/// anonymous clients and for users who may read the private repository alike, cached or not.
#[test]
fn private_digest_through_a_public_name_reveals_nothing() {
    let w = world(false, Duration::from_secs(300));
    let thaw = thaw_for(&w, true, Duration::from_secs(60));
    let c = http();
    let private = &w.images[1];
    let (priv_layer, _) = &private.layers[1];
    // alice caches priv/a completely.
    for p in [format!("manifests/{}", private.manifest_digest), format!("blobs/{}", private.config_digest), format!("blobs/{priv_layer}")] {
        assert_eq!(get(&c, &format!("{}/v2/{}/{p}", thaw.url(), REPOS[1]), Some(&Who::Account(0)), None).status(), 200);
    }
    for who in [None, Some(Who::Account(0)), Some(Who::Account(2))] {
        for p in [format!("manifests/{}", private.manifest_digest), format!("blobs/{}", private.config_digest), format!("blobs/{priv_layer}")] {
            let r = get(&c, &format!("{}/v2/{}/{p}", thaw.url(), REPOS[0]), who.as_ref(), None);
            assert_eq!(r.status(), 404, "{who:?} {p}");
            let v: serde_json::Value = r.json().unwrap();
            assert!(matches!(v["errors"][0]["code"].as_str(), Some("BLOB_UNKNOWN" | "MANIFEST_UNKNOWN")), "{v}");
            let m = v["errors"][0]["message"].as_str().unwrap();
            assert!(!m.contains("priv/a"), "the error names the private repository: {m}");
        }
    }
    // The shared public base layer is served through both names to those who may read them.
    let (base, data) = &w.images[0].layers[0];
    for repo in [REPOS[0], REPOS[1]] {
        let r = get(&c, &format!("{}/v2/{repo}/blobs/{base}", thaw.url()), Some(&Who::Account(0)), None);
        assert_eq!(r.status(), 200);
        assert_eq!(r.bytes().unwrap().as_ref(), data.as_slice());
    }
}

/// Grants expire: after `auth_ttl` the upstream is asked again (a revoked user is refused), and a
/// grant never outlives the JWT it was given for.
#[test]
fn grants_expire_with_auth_ttl_and_with_the_token() {
    // auth_ttl: revocation upstream takes effect through thaw once the grant lapses.
    let w = world(false, Duration::from_secs(300));
    let ttl = Duration::from_millis(700);
    let thaw = thaw_for(&w, true, ttl);
    let c = http();
    let (ld, data) = w.images[2].layers[0].clone();
    let blob = format!("{}/v2/{}/blobs/{ld}", thaw.url(), REPOS[2]);
    let bob = Who::Account(1);
    let r = get(&c, &blob, Some(&bob), None);
    assert_eq!(r.bytes().unwrap().as_ref(), data.as_slice());
    w.fake.revoke(REPOS[2], "u2");
    std::thread::sleep(ttl + Duration::from_millis(400));
    let r = get(&c, &blob, Some(&bob), None);
    assert_eq!(r.status(), 401, "a revoked user was still served after auth_ttl");
    // alice, still on the ACL, is served from the cache (checked below after the second part).
    let r = get(&c, &blob, Some(&Who::Account(0)), None);
    assert_eq!(r.status(), 200);

    // Within auth_ttl, the first refusal the upstream gives a revoked user ends their grant at
    // once: bob's cached blob stops flowing as soon as an uncached one is refused to him.
    let w2 = world(false, Duration::from_secs(300));
    let thaw2 = thaw_for(&w2, true, Duration::from_secs(60));
    let (l0, d0) = w2.images[2].layers[0].clone();
    let (l1, _) = w2.images[2].layers[1].clone();
    let b0 = format!("{}/v2/{}/blobs/{l0}", thaw2.url(), REPOS[2]);
    let b1 = format!("{}/v2/{}/blobs/{l1}", thaw2.url(), REPOS[2]);
    assert_eq!(get(&c, &b0, Some(&bob), None).bytes().unwrap().as_ref(), d0.as_slice());
    w2.fake.revoke(REPOS[2], "u2");
    assert_eq!(get(&c, &b0, Some(&bob), None).status(), 200, "within auth_ttl the grant is remembered (documented)");
    assert_eq!(get(&c, &b1, Some(&bob), None).status(), 401, "the upstream refused bob");
    assert_eq!(get(&c, &b0, Some(&bob), None).status(), 401, "bob's grant outlived the upstream's refusal");

    // alice, still on the ACL, is served from the cache.
    let r = get(&c, &blob, Some(&Who::Account(0)), None);
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-thaw-cache"], "hit");

    // A JWT living 2 s, auth_ttl a minute: the grant dies with the token.
    let w = world(true, Duration::from_secs(2));
    let thaw = thaw_for(&w, false, Duration::from_secs(60));
    let (ld, data) = w.images[1].layers[1].clone();
    let blob = format!("{}/v2/{}/blobs/{ld}", thaw.url(), REPOS[1]);
    let tok = upstream_token(&c, &w.fake, Some(0), REPOS[1]);
    assert_eq!(tok.split('.').count(), 3, "the fake issues JWT-shaped tokens here");
    let r = get(&c, &blob, None, Some(&tok));
    assert_eq!(r.bytes().unwrap().as_ref(), data.as_slice());
    std::thread::sleep(Duration::from_millis(3100));
    let before = w.fake.registry_requests();
    let r = get(&c, &blob, None, Some(&tok));
    assert_eq!(r.status(), 401, "an expired token was still honoured");
    assert!(w.fake.registry_requests() > before, "thaw did not ask the upstream again");
}

/// Fail closed: while the upstream cannot be asked, cached private content goes to no identity
/// the upstream has not recently authorised; cached public content is still served.
#[test]
fn private_content_fails_closed_when_the_upstream_is_down() {
    let w = world(false, Duration::from_secs(300));
    let thaw = thaw_for(&w, true, Duration::from_secs(60));
    let c = http();
    let (ld, _) = w.images[2].layers[1].clone();
    let blob = format!("{}/v2/{}/blobs/{ld}", thaw.url(), REPOS[2]);
    assert_eq!(get(&c, &blob, Some(&Who::Account(0)), None).status(), 200);
    let (pub_layer, pub_data) = w.images[0].layers[1].clone();
    let pub_blob = format!("{}/v2/{}/blobs/{pub_layer}", thaw.url(), REPOS[0]);
    assert_eq!(get(&c, &pub_blob, None, None).status(), 200);
    // A token u2 got before the outage, never used through thaw.
    let t_u2 = upstream_token(&c, &w.fake, Some(1), REPOS[2]);
    w.fake.go_down();
    for (who, tok) in [(Some(Who::Account(1)), None), (Some(Who::Account(2)), None), (None, None), (None, Some(t_u2.as_str()))] {
        let r = get(&c, &blob, who.as_ref(), tok);
        assert!(!r.status().is_success(), "{who:?} {tok:?} was served private content with the upstream down");
    }
    let r = get(&c, &pub_blob, None, None);
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().unwrap().as_ref(), pub_data.as_slice());

    // The registry is back but its token service fails: still closed to unauthorised identities.
    w.fake.come_up();
    w.fake.set(Kind::Token, Fault::Status(503));
    for who in [Who::Account(1), Who::Account(2)] {
        let r = get(&c, &blob, Some(&who), None);
        assert!(!r.status().is_success(), "{who:?} was served private content while the token service failed");
    }
    w.fake.heal();
    assert_eq!(get(&c, &blob, Some(&Who::Account(1)), None).status(), 200, "bob may read priv/b once the upstream can say so");
}

/// Operator credentials (`credentials` of an upstream): content fetched with them is shared by
/// every client of that upstream — the operator's documented choice (see `UpstreamConfig`).
#[test]
fn operator_credentials_share_content_with_every_client() {
    let w = world(false, Duration::from_secs(300));
    let mut up = upstream("fake", &w.fake.url(), true);
    up.credentials = Some(Credentials { username: "u1".into(), password: "pw1".into() });
    let thaw = Thaw::start(RegistryConfig { upstreams: vec![up], ..Default::default() });
    let c = http();
    for repo in [1usize, 2] {
        let r = get(&c, &format!("{}/v2/{}/manifests/v1", thaw.url(), REPOS[repo]), None, None);
        assert_eq!(r.status(), 200, "{}", REPOS[repo]);
        assert_eq!(r.bytes().unwrap().as_ref(), w.images[repo].manifest.as_slice());
    }
    // Still nothing beyond what the operator's user may read upstream: a repository u1 cannot
    // read stays closed.
    w.fake.put_image("priv/c", "v1", &[filler(130, 1000)]);
    w.fake.allow("priv/c", "u3");
    let r = get(&c, &format!("{}/v2/priv/c/manifests/v1", thaw.url()), None, None);
    assert_eq!(r.status(), 401);
}

/// A public repository that turns private upstream stops being served from the cache to everyone
/// once thaw notices: the next tag revalidation with the mirror's default credential is refused,
/// thaw records the repository as private, and even content by digest (never revalidated itself)
/// then needs credentials the upstream accepts.
#[test]
fn a_repository_turning_private_is_noticed_at_the_next_revalidation() {
    let w = world(false, Duration::from_secs(300));
    let cfg = RegistryConfig {
        upstreams: vec![upstream("fake", &w.fake.url(), true)],
        accounts: accounts(),
        tag_ttl: Duration::ZERO,
        ..Default::default()
    };
    let thaw = Thaw::start(cfg);
    let c = http();
    let img = &w.images[0];
    let (ld, data) = img.layers[1].clone();
    let tag_url = format!("{}/v2/{}/manifests/v1", thaw.url(), REPOS[0]);
    let blob_url = format!("{}/v2/{}/blobs/{ld}", thaw.url(), REPOS[0]);
    assert_eq!(get(&c, &tag_url, None, None).status(), 200);
    assert_eq!(get(&c, &blob_url, None, None).bytes().unwrap().as_ref(), data.as_slice());

    w.fake.make_private(REPOS[0]);
    w.fake.allow(REPOS[0], "u1");
    assert_eq!(get(&c, &tag_url, None, None).status(), 401, "the revalidation was refused");
    assert_eq!(get(&c, &blob_url, None, None).status(), 401, "cached content of a now-private repository served to anyone");
    // Those the upstream still lets in are served, from the cache.
    let r = get(&c, &blob_url, Some(&Who::Account(0)), None);
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-thaw-cache"], "hit");
    assert_eq!(get(&c, &blob_url, Some(&Who::Account(2)), None).status(), 401);
}

/// A token service that never answers: private content fails closed within a bound set by the
/// upstream timeout, and cached public content is still served.
#[test]
fn a_hanging_token_service_fails_closed_in_bounded_time() {
    let w = world(false, Duration::from_secs(300));
    let cfg = RegistryConfig {
        upstreams: vec![upstream("fake", &w.fake.url(), true)],
        accounts: accounts(),
        upstream_timeout: Duration::from_millis(700),
        ..Default::default()
    };
    let thaw = Thaw::start(cfg);
    let c = http();
    let (pl, pdata) = w.images[0].layers[1].clone();
    let pub_blob = format!("{}/v2/{}/blobs/{pl}", thaw.url(), REPOS[0]);
    assert_eq!(get(&c, &pub_blob, None, None).bytes().unwrap().as_ref(), pdata.as_slice());
    w.fake.set(Kind::Token, Fault::Hang);
    let (ld, _) = w.images[1].layers[1].clone();
    let blob = format!("{}/v2/{}/blobs/{ld}", thaw.url(), REPOS[1]);
    let t0 = std::time::Instant::now();
    let r = get(&c, &blob, Some(&Who::Account(0)), None);
    assert!(!r.status().is_success(), "{}", r.status());
    assert!(t0.elapsed() < Duration::from_secs(8), "took {:?}", t0.elapsed());
    let r = get(&c, &pub_blob, None, None);
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().unwrap().as_ref(), pdata.as_slice());
}
