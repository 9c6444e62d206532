//! Chaos: three `handler serve` instances (processes of their own) over one PostgreSQL database
//! and one private Redis, each reaching Redis through a proxy of its own and the database through
//! a shared one. Writers and readers work on every instance while a fault injector cuts single
//! instances off from Redis (connections refused, or hanging), pauses Redis past the cache's
//! timeouts (`SIGSTOP`), restarts it empty and with old data, and cuts the database off. Then a
//! history checker holds every read to every write acknowledged before the read began.
//!
//! The writers' films are created before the run and are the only films with a `year` of 3000 or
//! more and a `metacritic` of 1000 or more, so lists filtered on `year.gte=3000` hold nothing
//! else, and lists sorted by `-metacritic` start with them. Every write sets the title (which
//! names the write: `Chaos film 7 v12`), year, genres and metacritic, so a row shows which write
//! it reflects. Each film belongs to one writer, whose writes are sequential, so the writes of
//! a film are totally ordered.
//!
//! A read that began at `s` and ended at `e` may show, of each film, the state of the last write
//! acknowledged before `s`, or of any later write sent before `e` (in flight, or answered 503: its
//! outcome is unknown); anything older is a stale read, anything else a phantom. Lists and
//! facet counts are checked the same way, film by film: a film whose every possible state matches
//! a list's filter and ranks above its last item must be on the page; facet counts must lie
//! between what the films certainly and possibly contribute. Every answer is held to this,
//! whatever its `X-Cache` says (a `STALE` fallback while the database is down included). After
//! the faults, every instance is read once more (waiting out 503s), and the database directly:
//! each must show every acknowledged write ("lost" otherwise). Some reads ask for other films,
//! which never change and are mostly not cached: the database's answer, or a 503 while it is down.
//!
//! Statuses: writes 200 (acknowledged) or 503 with `Retry-After` (refused or unknown); reads 200
//! or 503 with `Retry-After`. Anything else, or no answer, is a failure.
//!
//! `CHAOS_FAULTS=Pause,RestartOld` (names of [`Fault`]) injects only those kinds (the others'
//! turns pass quietly); `CHAOS_FAULTS=none` runs the workload alone, which must pass on any
//! version that is correct without faults.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::{SocketAddr, ToSocketAddrs as _};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::PrivateRedis;
use common::proxy::{Link, Proxy};
use common::served::{Served, free_port, serve};
use handler::datasets::Value;
use serde_json::{Value as Json, json};

const INSTANCES: usize = 3;
const NAMES: [&str; INSTANCES] = ["A", "B", "C"];
const WRITERS: usize = 4;
const FILMS_PER_WRITER: usize = 6;
const FILMS: usize = WRITERS * FILMS_PER_WRITER;
const READERS: usize = 4;
/// How long writers, readers and faults run.
const CHAOS: Duration = Duration::from_secs(42);
/// Between faults: long enough for answers to be cached again (and served stale, if they can be).
const QUIET: Duration = Duration::from_millis(1800);
/// An instance cut off from Redis, or the database cut off.
const CUT: Duration = Duration::from_secs(3);
/// Redis paused: well past the cache's Redis timeouts (250–500 ms).
const PAUSE: Duration = Duration::from_secs(2);
/// Redis down between a kill and its restart.
const DOWN: Duration = Duration::from_millis(800);
/// How long the final reads may wait for an instance to answer after the faults.
const RECOVERY: Duration = Duration::from_secs(30);
/// Film `i` of the writers has id `FIRST_ID + i`.
const FIRST_ID: i64 = 900_000_000;
const ADMIN_EMAIL: &str = "admin@chaos.test";
const GENRES: [&str; 3] = ["Drama", "Comedy", "Western"];

/// splitmix64: enough randomness for a workload, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// What a write sets of a writer's film (genres lowercased, as filters compare them).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Film {
    year: i64,
    genres: BTreeSet<String>,
    metacritic: i64,
}

impl Film {
    /// A year in 3000–3009, one to three genres, and a metacritic of 1000 or more that no other
    /// film has (`film` in its last six bits): ties would make the order depend on the key.
    fn random(rng: &mut Rng, film: usize) -> Film {
        let mask = 1 + rng.below(7);
        Film {
            year: 3000 + rng.below(10) as i64,
            genres: (0..GENRES.len())
                .filter(|g| mask & (1 << g) != 0)
                .map(|g| GENRES[g].to_lowercase())
                .collect(),
            metacritic: 1000 + (rng.below(100) * 64 + film) as i64,
        }
    }

    fn has(&self, genre: &str) -> bool {
        self.genres.contains(genre)
    }

    /// The JSON body of the write that makes version `version` of `film`.
    fn body(&self, film: usize, version: u32) -> Json {
        let genres: Vec<&str> = GENRES
            .iter()
            .copied()
            .filter(|g| self.genres.contains(&g.to_lowercase()))
            .collect();
        json!({
            "title": format!("Chaos film {film} v{version}"),
            "year": self.year,
            "genres": genres,
            "metacritic": self.metacritic,
        })
    }
}

/// One write as the writer saw it. Times are since the test's start, on the monotonic clock.
#[derive(Debug, Clone)]
struct Sent {
    film: usize,
    version: u32,
    state: Film,
    instance: usize,
    start: Duration,
    end: Duration,
    /// Answered 2xx: the write happened, and every read that begins later must show it.
    acked: bool,
    /// The answer, as text (`200`, `503 with Retry-After`, `no answer: …`).
    status: String,
    /// `X-Cache-Invalidation: deferred` on the answer.
    deferred: bool,
    /// What was wrong with the answer, if anything.
    problem: Option<String>,
}

impl Sent {
    fn describe(&self) -> String {
        format!(
            "v{} ({} through {}, t={:.3}–{:.3} s{})",
            self.version,
            self.status,
            NAMES[self.instance],
            self.start.as_secs_f64(),
            self.end.as_secs_f64(),
            if self.deferred {
                ", X-Cache-Invalidation: deferred"
            } else {
                ""
            }
        )
    }
}

/// One of the writers' films as a read showed it.
#[derive(Debug, Clone)]
struct Seen {
    film: usize,
    version: u32,
    state: Film,
}

/// A row of a list.
#[derive(Debug, Clone)]
enum Listed {
    Writers(Seen),
    Other(i64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sort {
    MetacriticDesc,
    YearAsc,
    YearDesc,
}

impl Sort {
    /// A writer's film's place in the order: the column (nulls last), ties by key ascending.
    fn rank(self, film: &Film, id: usize) -> (i64, usize) {
        match self {
            Sort::MetacriticDesc => (-film.metacritic, id),
            Sort::YearAsc => (film.year, id),
            Sort::YearDesc => (-film.year, id),
        }
    }
}

/// A list the readers ask for, with the filter it applies as a predicate on the writers' films.
struct ListQuery {
    query: &'static str,
    filter: fn(&Film) -> bool,
    sort: Sort,
    limit: usize,
    /// Whether other films (which never change, and rank below the writers') fill the page.
    mixed: bool,
}

/// Facet counts the readers ask for, over the writers' films only (`year.gte=3000` or more).
struct FacetQuery {
    path: &'static str,
    filter: fn(&Film) -> bool,
    values: fn(&Film) -> Vec<String>,
}

fn lists() -> Vec<ListQuery> {
    let list = |query, filter, sort, limit, mixed| ListQuery {
        query,
        filter,
        sort,
        limit,
        mixed,
    };
    vec![
        list(
            "year.gte=3000&sort=-metacritic&limit=10",
            |_| true,
            Sort::MetacriticDesc,
            10,
            false,
        ),
        list(
            "genres=drama&year.gte=3000&sort=-metacritic&limit=5",
            |f| f.has("drama"),
            Sort::MetacriticDesc,
            5,
            false,
        ),
        list(
            "year.gte=3005&sort=year&limit=8",
            |f| f.year >= 3005,
            Sort::YearAsc,
            8,
            false,
        ),
        list(
            "genres=western&year.gte=3000&year.lt=3005&sort=-year",
            |f| f.has("western") && f.year < 3005,
            Sort::YearDesc,
            100,
            false,
        ),
        list(
            "genres=comedy&genres=drama&year.gte=3000&sort=-metacritic&limit=6",
            |f| f.has("comedy") && f.has("drama"),
            Sort::MetacriticDesc,
            6,
            false,
        ),
        list(
            "genres=drama&sort=-metacritic&limit=20",
            |f| f.has("drama"),
            Sort::MetacriticDesc,
            20,
            true,
        ),
        list(
            "genres=comedy&sort=-metacritic&limit=15",
            |f| f.has("comedy"),
            Sort::MetacriticDesc,
            15,
            true,
        ),
        list(
            "genres=western&year.lt=3005&sort=-metacritic&limit=25",
            |f| f.has("western") && f.year < 3005,
            Sort::MetacriticDesc,
            25,
            true,
        ),
    ]
}

fn facets() -> Vec<FacetQuery> {
    let genres = |f: &Film| f.genres.iter().cloned().collect();
    vec![
        FacetQuery {
            path: "genres?year.gte=3000",
            filter: |_| true,
            values: genres,
        },
        FacetQuery {
            path: "genres?genres=comedy&year.gte=3005",
            filter: |f| f.has("comedy") && f.year >= 3005,
            values: genres,
        },
        FacetQuery {
            path: "year?genres=drama&year.gte=3000",
            filter: |f| f.has("drama"),
            values: |f| vec![f.year.to_string()],
        },
    ]
}

#[derive(Debug, Clone, Copy)]
enum Target {
    /// A writer's film.
    Item(usize),
    List(usize),
    Facets(usize),
    /// Another film, by id: one of 17,000 that never change, so mostly not cached: what the
    /// database answers (or a 503 while it is down).
    Other(i64),
}

impl Target {
    fn kind(self) -> &'static str {
        match self {
            Target::Item(_) => "item",
            Target::List(_) => "list",
            Target::Facets(_) => "facets",
            Target::Other(_) => "other item",
        }
    }

    fn path(self, lists: &[ListQuery], facets: &[FacetQuery]) -> String {
        match self {
            Target::Item(film) => format!("/api/movies/{}", FIRST_ID + film as i64),
            Target::List(i) => format!("/api/movies?{}", lists[i].query),
            Target::Facets(i) => format!("/api/movies/facets/{}", facets[i].path),
            Target::Other(id) => format!("/api/movies/{id}"),
        }
    }
}

#[derive(Debug)]
enum Shown {
    Item(Option<Seen>),
    List(Vec<Listed>),
    Facets(BTreeMap<String, u64>),
    /// The other film asked for (nothing more to check: it never changes).
    Other,
    /// 503 with `Retry-After`.
    Unavailable,
    /// A forbidden status, no answer, or an answer that does not parse.
    Failed(String),
}

#[derive(Debug)]
struct Read {
    instance: usize,
    target: Target,
    start: Duration,
    end: Duration,
    x_cache: String,
    shown: Shown,
    /// Made after the faults and the writes were over.
    last: bool,
}

/// What writers and readers share.
struct Ctx {
    client: reqwest::Client,
    ports: Vec<u16>,
    token: String,
    t0: Instant,
    stop: AtomicBool,
    seed: u64,
    /// The ids of the other films.
    others: Vec<i64>,
    lists: Vec<ListQuery>,
    facets: Vec<FacetQuery>,
}

impl Ctx {
    fn now(&self) -> Duration {
        self.t0.elapsed()
    }

    fn url(&self, instance: usize, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.ports[instance])
    }
}

struct Answer {
    status: u16,
    retry_after: bool,
    x_cache: String,
    deferred: bool,
    body: bytes::Bytes,
}

impl Answer {
    fn status_text(&self) -> String {
        let retry = if self.retry_after {
            " with Retry-After"
        } else {
            ""
        };
        format!("{}{retry}", self.status)
    }

    fn snippet(&self) -> String {
        String::from_utf8_lossy(&self.body[..self.body.len().min(200)]).into_owned()
    }

    /// 503 with `Retry-After`: the one refusal allowed.
    fn unavailable(&self) -> bool {
        self.status == 503 && self.retry_after
    }
}

async fn send(request: reqwest::RequestBuilder) -> Result<Answer, String> {
    let response = request
        .send()
        .await
        .map_err(|e| format!("no answer: {e}"))?;
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let (x_cache, deferred) = (header("x-cache"), header("x-cache-invalidation"));
    let status = response.status().as_u16();
    let retry_after = response.headers().contains_key("retry-after");
    let body = response
        .bytes()
        .await
        .map_err(|e| format!("the answer broke off: {e}"))?;
    Ok(Answer {
        status,
        retry_after,
        x_cache,
        deferred: deferred == "deferred",
        body,
    })
}

/// A row as JSON: one of the other films, or which write of a writer's film it shows.
fn parse_row(row: &Json) -> Result<Listed, String> {
    let id = row["id"].as_i64().ok_or("a row without an integer id")?;
    if !(FIRST_ID..FIRST_ID + FILMS as i64).contains(&id) {
        return Ok(Listed::Other(id));
    }
    let film = (id - FIRST_ID) as usize;
    let title = row["title"].as_str().ok_or("a row without a title")?;
    let version = title
        .strip_prefix(&format!("Chaos film {film} v"))
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("film {film} has the title {title:?}"))?;
    let genres = match &row["genres"] {
        Json::Array(items) => items
            .iter()
            .map(|g| g.as_str().map(|g| g.trim().to_lowercase()))
            .collect::<Option<BTreeSet<_>>>()
            .ok_or("genres that are not strings")?,
        Json::String(text) => text.split(',').map(|g| g.trim().to_lowercase()).collect(),
        other => return Err(format!("film {film} has genres {other}")),
    };
    let integer = |column: &str| {
        row[column]
            .as_i64()
            .ok_or_else(|| format!("film {film} has {column} {}", row[column]))
    };
    Ok(Listed::Writers(Seen {
        film,
        version,
        state: Film {
            year: integer("year")?,
            genres,
            metacritic: integer("metacritic")?,
        },
    }))
}

fn parse_answer(target: Target, body: &[u8]) -> Result<Shown, String> {
    let json: Json = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    match target {
        Target::Item(film) => match parse_row(&json)? {
            Listed::Writers(seen) if seen.film == film => Ok(Shown::Item(Some(seen))),
            other => Err(format!("asked for film {film}, got {other:?}")),
        },
        Target::List(_) => json["items"]
            .as_array()
            .ok_or("a list without items")?
            .iter()
            .map(parse_row)
            .collect::<Result<_, _>>()
            .map(Shown::List),
        Target::Facets(_) => {
            let mut counts = BTreeMap::new();
            for value in json["values"].as_array().ok_or("facets without values")? {
                let name = match &value["value"] {
                    Json::String(text) => text.trim().to_lowercase(),
                    other => other.to_string(),
                };
                let count = value["count"].as_u64().ok_or("a count that is not one")?;
                if counts.insert(name.clone(), count).is_some() {
                    return Err(format!("the value {name:?} is counted twice"));
                }
            }
            Ok(Shown::Facets(counts))
        }
        Target::Other(id) => match parse_row(&json)? {
            Listed::Other(shown) if shown == id => Ok(Shown::Other),
            other => Err(format!("asked for film {id}, got {other:?}")),
        },
    }
}

/// One GET, timed and interpreted.
async fn read(ctx: &Ctx, instance: usize, target: Target) -> Read {
    let path = target.path(&ctx.lists, &ctx.facets);
    let start = ctx.now();
    let answer = send(ctx.client.get(ctx.url(instance, &path))).await;
    let end = ctx.now();
    let (x_cache, shown) = match answer {
        Err(error) => (String::new(), Shown::Failed(error)),
        Ok(answer) => {
            let shown = match answer.status {
                200 => parse_answer(target, &answer.body)
                    .unwrap_or_else(|e| Shown::Failed(format!("{e}: {}", answer.snippet()))),
                404 if matches!(target, Target::Item(_)) => Shown::Item(None),
                _ if answer.unavailable() => Shown::Unavailable,
                _ => Shown::Failed(format!(
                    "answered {}: {}",
                    answer.status_text(),
                    answer.snippet()
                )),
            };
            (answer.x_cache, shown)
        }
    };
    Read {
        instance,
        target,
        start,
        end,
        x_cache,
        shown,
        last: false,
    }
}

/// A writer: PATCHes its own films one after the other, each through an instance picked at
/// random, until told to stop.
async fn writer(ctx: Arc<Ctx>, index: usize) -> Vec<Sent> {
    let mut rng = Rng(ctx.seed ^ (index as u64 + 1).wrapping_mul(0x1234_5678_9abc));
    let films: Vec<usize> = (index * FILMS_PER_WRITER..(index + 1) * FILMS_PER_WRITER).collect();
    let mut versions = vec![0u32; films.len()];
    let mut sent = Vec::new();
    while !ctx.stop.load(Ordering::SeqCst) {
        let slot = rng.below(films.len());
        let film = films[slot];
        versions[slot] += 1;
        let version = versions[slot];
        let state = Film::random(&mut rng, film);
        let instance = rng.below(INSTANCES);
        let request = ctx
            .client
            .patch(ctx.url(instance, &format!("/api/movies/{}", FIRST_ID + film as i64)))
            .bearer_auth(&ctx.token)
            .json(&state.body(film, version));
        let start = ctx.now();
        let answer = send(request).await;
        let end = ctx.now();
        let mut write = Sent {
            film,
            version,
            state,
            instance,
            start,
            end,
            acked: false,
            status: String::new(),
            deferred: false,
            problem: None,
        };
        match answer {
            Err(error) => {
                write.problem = Some(error.clone());
                write.status = error;
            }
            Ok(answer) => {
                write.status = answer.status_text();
                write.deferred = answer.deferred;
                if answer.status == 200 {
                    write.acked = true;
                    let row = serde_json::from_slice(&answer.body)
                        .map_err(|e| e.to_string())
                        .and_then(|row| parse_row(&row));
                    match row {
                        Ok(Listed::Writers(seen))
                            if seen.film == film
                                && seen.version == version
                                && seen.state == write.state => {}
                        other => {
                            write.problem = Some(format!("answered with the row {other:?}"));
                        }
                    }
                } else if !answer.unavailable() {
                    write.problem = Some(format!(
                        "answered {}: {}",
                        answer.status_text(),
                        answer.snippet()
                    ));
                }
            }
        }
        let refused = !write.acked;
        sent.push(write);
        // About six writes a second per writer: enough to move films all the time, few enough
        // that answers stay cached between them (and are served stale, if they can be).
        let pause = 50 + rng.below(200) as u64 + if refused { 150 } else { 0 };
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
    sent
}

/// A reader: items, lists and facets from instances picked at random, until told to stop.
async fn reader(ctx: Arc<Ctx>, index: usize) -> Vec<Read> {
    let mut rng = Rng(ctx.seed ^ (index as u64 + 1).wrapping_mul(0x0fed_cba9_8765));
    let mut reads = Vec::new();
    while !ctx.stop.load(Ordering::SeqCst) {
        let target = match rng.below(20) {
            0..7 => Target::Item(rng.below(FILMS)),
            7..15 => Target::List(rng.below(ctx.lists.len())),
            15..18 => Target::Facets(rng.below(ctx.facets.len())),
            _ => Target::Other(ctx.others[rng.below(ctx.others.len())]),
        };
        reads.push(read(&ctx, rng.below(INSTANCES), target).await);
        tokio::time::sleep(Duration::from_millis(rng.below(15) as u64)).await;
    }
    reads
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    CutRefused,
    RestartEmpty,
    Pause,
    DatabaseRestart,
    CutSilent,
    RestartOld,
}

impl Fault {
    /// The order of faults. The database goes away while Redis is full of answers (not just
    /// after an empty restart), so that answers a write has superseded are at hand to fall
    /// back on; Redis comes back with old data (saved aside before the first fault) more than
    /// 15 s after its empty restart, so that what follows one restart does not hide the other.
    const CYCLE: [Fault; 6] = [
        Fault::CutRefused,
        Fault::RestartEmpty,
        Fault::Pause,
        Fault::DatabaseRestart,
        Fault::CutSilent,
        Fault::RestartOld,
    ];

    fn name(self) -> &'static str {
        match self {
            Fault::CutRefused => "instance cut off from Redis (refused)",
            Fault::CutSilent => "instance cut off from Redis (silent)",
            Fault::Pause => "Redis paused",
            Fault::RestartEmpty => "Redis restarted empty",
            Fault::RestartOld => "Redis restarted with old data",
            Fault::DatabaseRestart => "database restarted",
        }
    }
}

/// The Redis the instances share, and what restarts it.
struct Redis {
    server: Option<PrivateRedis>,
    dir: PathBuf,
    /// A copy of an earlier `dump.rdb`, for restarts with old data.
    snapshot: PathBuf,
}

impl Redis {
    fn save(&self) {
        self.server
            .as_ref()
            .unwrap()
            .save(&self.dir, &self.snapshot);
    }

    /// Kills it and starts it again (off the async workers: this waits for a `PING`).
    async fn restart(&mut self, old_data: bool) {
        let server = self.server.take().unwrap();
        let (dir, snapshot) = (self.dir.clone(), self.snapshot.clone());
        self.server = Some(
            tokio::task::spawn_blocking(move || {
                let dump = old_data.then_some(snapshot.as_path());
                server.restart_snapshots(&dir, dump, DOWN)
            })
            .await
            .unwrap(),
        );
    }
}

/// Faults, one at a time with quiet spells between, for [`CHAOS`]; then stops the workload.
/// Returns the timeline and the counts by kind.
async fn inject_faults(
    ctx: &Ctx,
    redis: &mut Redis,
    redis_links: &[Proxy],
    database_link: &Proxy,
) -> (Vec<(Duration, String)>, BTreeMap<Fault, usize>) {
    let end = ctx.now() + CHAOS;
    let mut timeline = Vec::new();
    let mut counts = BTreeMap::new();
    let mut note = |what: String| timeline.push((ctx.now(), what));
    tokio::time::sleep(QUIET).await;
    redis.save();
    note("Redis data saved aside".into());
    let mut cut = 0;
    for step in 0.. {
        tokio::time::sleep(QUIET).await;
        if ctx.now() + CUT + QUIET > end {
            break;
        }
        let fault = Fault::CYCLE[step % Fault::CYCLE.len()];
        if let Ok(only) = std::env::var("CHAOS_FAULTS")
            && !only.split(',').any(|o| o == format!("{fault:?}"))
        {
            tokio::time::sleep(CUT).await;
            continue;
        }
        *counts.entry(fault).or_insert(0) += 1;
        match fault {
            Fault::CutRefused | Fault::CutSilent => {
                let link = if fault == Fault::CutRefused {
                    Link::Refused
                } else {
                    Link::Silent
                };
                note(format!("{} cut off from Redis ({link:?})", NAMES[cut]));
                redis_links[cut].set(link);
                tokio::time::sleep(CUT).await;
                redis_links[cut].set(Link::Up);
                note(format!("{} reaches Redis again", NAMES[cut]));
                cut = (cut + 1) % INSTANCES;
            }
            Fault::Pause => {
                note("Redis paused (SIGSTOP)".into());
                redis.server.as_ref().unwrap().pause();
                tokio::time::sleep(PAUSE).await;
                redis.server.as_ref().unwrap().resume();
                note("Redis resumed (SIGCONT)".into());
            }
            Fault::RestartEmpty | Fault::RestartOld => {
                let old = fault == Fault::RestartOld;
                note(format!(
                    "Redis killed, to restart {}",
                    if old {
                        "with the data saved aside"
                    } else {
                        "empty"
                    }
                ));
                redis.restart(old).await;
                note("Redis answers again".into());
                if old {
                    redis.save();
                    note("Redis data saved aside".into());
                }
            }
            Fault::DatabaseRestart => {
                // What the instances see of a database restart: every connection ends and new
                // ones are refused, then accepted again. (Restarting the real server would break
                // the other tests that share it.)
                note("database cut off (connections ended and refused)".into());
                database_link.set(Link::Refused);
                tokio::time::sleep(CUT).await;
                database_link.set(Link::Up);
                note("database reachable again".into());
            }
        }
    }
    ctx.stop.store(true, Ordering::SeqCst);
    note("workload stopped".into());
    (timeline, counts)
}

/// After the faults: every target from every instance once, waiting out 503s (bounded).
async fn final_reads(ctx: &Ctx) -> (Vec<Read>, Vec<String>) {
    let mut targets: Vec<Target> = (0..FILMS).map(Target::Item).collect();
    targets.extend((0..ctx.lists.len()).map(Target::List));
    targets.extend((0..ctx.facets.len()).map(Target::Facets));
    let (mut reads, mut unanswered) = (Vec::new(), Vec::new());
    let started = Instant::now();
    for (instance, name) in NAMES.iter().enumerate() {
        for &target in &targets {
            loop {
                let mut read = read(ctx, instance, target).await;
                if matches!(read.shown, Shown::Unavailable) {
                    if started.elapsed() < RECOVERY {
                        tokio::time::sleep(Duration::from_millis(250)).await;
                        continue;
                    }
                    unanswered.push(format!(
                        "{name} still answers 503 to GET {} {RECOVERY:?} after the faults",
                        target.path(&ctx.lists, &ctx.facets)
                    ));
                }
                read.last = true;
                reads.push(read);
                break;
            }
        }
    }
    (reads, unanswered)
}

/// When answers came (e.g. 503s): spells of them with gaps under a second, and their counts.
fn spells(mut times: Vec<Duration>) -> String {
    times.sort();
    let mut spells: Vec<(Duration, Duration, usize)> = Vec::new();
    for time in times {
        match spells.last_mut() {
            Some((_, last, count)) if time - *last < Duration::from_secs(1) => {
                *last = time;
                *count += 1;
            }
            _ => spells.push((time, time, 1)),
        }
    }
    if spells.is_empty() {
        return "none".to_owned();
    }
    let spells: Vec<String> = spells
        .iter()
        .map(|(first, last, count)| {
            format!(
                "t={:.1}–{:.1} s ({count})",
                first.as_secs_f64(),
                last.as_secs_f64()
            )
        })
        .collect();
    spells.join(", ")
}

/// The writes of each film in order (version 0, the create, first).
type History = Vec<Vec<Sent>>;

/// The states a read made between `start` and `end` may show of `film`: the last write
/// acknowledged before it began, and every later one sent before it ended.
fn candidates(history: &History, film: usize, start: Duration, end: Duration) -> &[Sent] {
    let writes = &history[film];
    let last = writes
        .iter()
        .rposition(|w| w.acked && w.end < start)
        .expect("the film was created before any read");
    let sent = writes.iter().rposition(|w| w.start < end).unwrap();
    &writes[last..=sent]
}

fn check_seen(
    history: &History,
    seen: &Seen,
    start: Duration,
    end: Duration,
) -> Result<(), String> {
    let possible = candidates(history, seen.film, start, end);
    if let Some(write) = possible.iter().find(|w| w.version == seen.version) {
        if write.state == seen.state {
            return Ok(());
        }
        return Err(format!(
            "film {} shows v{} as {:?}, but that write set {:?}",
            seen.film, seen.version, seen.state, write.state
        ));
    }
    let required = &possible[0];
    Err(
        match history[seen.film]
            .iter()
            .find(|w| w.version == seen.version)
        {
            Some(shown) if shown.version < required.version => format!(
                "film {} shows {}, but {} was acknowledged before the read began",
                seen.film,
                shown.describe(),
                required.describe()
            ),
            Some(shown) => format!(
                "film {} shows {}, sent after the read ended",
                seen.film,
                shown.describe()
            ),
            None => format!(
                "film {} shows v{}, which was never sent",
                seen.film, seen.version
            ),
        },
    )
}

fn check_list(
    history: &History,
    query: &ListQuery,
    baseline: &[i64],
    items: &[Listed],
    start: Duration,
    end: Duration,
) -> Vec<String> {
    let mut problems = Vec::new();
    if items.len() > query.limit {
        problems.push(format!(
            "{} rows for a limit of {}",
            items.len(),
            query.limit
        ));
    }
    let mut on_page = BTreeSet::new();
    let mut others = Vec::new();
    let mut previous: Option<(i64, usize)> = None;
    for item in items {
        match item {
            Listed::Writers(seen) => {
                if let Err(problem) = check_seen(history, seen, start, end) {
                    problems.push(problem);
                }
                if !(query.filter)(&seen.state) {
                    problems.push(format!(
                        "film {} is listed as {:?}, which the filter excludes",
                        seen.film, seen.state
                    ));
                }
                if !on_page.insert(seen.film) {
                    problems.push(format!("film {} is listed twice", seen.film));
                }
                if !others.is_empty() {
                    problems.push(format!(
                        "film {} is listed after other films, which rank below it",
                        seen.film
                    ));
                }
                let rank = query.sort.rank(&seen.state, seen.film);
                if previous.is_some_and(|p| p >= rank) {
                    problems.push(format!("film {} is out of order", seen.film));
                }
                previous = Some(rank);
            }
            Listed::Other(id) => others.push(*id),
        }
    }
    if query.mixed {
        let expected = if items.len() == query.limit {
            &baseline[..others.len().min(baseline.len())]
        } else {
            baseline
        };
        if others != expected {
            problems.push(format!(
                "the other films are {others:?}, expected {expected:?}"
            ));
        }
    } else if !others.is_empty() {
        problems.push(format!("films outside the writers' are listed: {others:?}"));
    }
    // A film that matches in every state it may be in, and ranks above the page's last row in
    // each (or the page is not full), must be on it.
    let full = items.len() == query.limit;
    let last = match items.last() {
        Some(Listed::Writers(seen)) => Some(query.sort.rank(&seen.state, seen.film)),
        _ => None, // another film (below every writer's) or none
    };
    for film in (0..FILMS).filter(|f| !on_page.contains(f)) {
        let possible = candidates(history, film, start, end);
        let must = possible.iter().all(|w| {
            (query.filter)(&w.state)
                && (!full || last.is_none_or(|last| query.sort.rank(&w.state, film) < last))
        });
        if must {
            problems.push(format!(
                "film {film} is missing, though it belongs on this page in every state it may be \
                 in (the last acknowledged: {})",
                possible[0].describe()
            ));
        }
    }
    problems
}

fn check_facets(
    history: &History,
    query: &FacetQuery,
    counts: &BTreeMap<String, u64>,
    start: Duration,
    end: Duration,
) -> Vec<String> {
    let mut bounds: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for film in 0..FILMS {
        let possible = candidates(history, film, start, end);
        let mut values: BTreeMap<String, usize> = BTreeMap::new();
        for write in possible.iter().filter(|w| (query.filter)(&w.state)) {
            for value in (query.values)(&write.state) {
                *values.entry(value).or_insert(0) += 1;
            }
        }
        for (value, states) in values {
            let (certain, possible_count) = bounds.entry(value).or_insert((0, 0));
            *possible_count += 1;
            if states == possible.len() {
                *certain += 1;
            }
        }
    }
    let mut problems = Vec::new();
    let names: BTreeSet<&String> = bounds.keys().chain(counts.keys()).collect();
    for name in names {
        let count = counts.get(name).copied().unwrap_or(0);
        let (low, high) = bounds.get(name).copied().unwrap_or((0, 0));
        if !(low..=high).contains(&count) {
            problems.push(format!("{name:?} counted {count}, expected {low}..={high}"));
        }
    }
    problems
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    /// A read during the run that misses an acknowledged write (or shows one never made).
    Stale,
    /// After the run: an instance or the database without an acknowledged write.
    Lost,
    /// A forbidden status, or no answer.
    Status,
}

struct Violation {
    at: Duration,
    kind: Kind,
    /// What was wrong: `item`, `list`, `facets`, `write` or `database`.
    what: &'static str,
    /// The read's `X-Cache`, if a read.
    x_cache: String,
    text: String,
}

fn check_read(
    ctx: &Ctx,
    history: &History,
    baselines: &[Vec<i64>],
    read: &Read,
) -> Option<Violation> {
    let problems = match &read.shown {
        Shown::Unavailable | Shown::Other => return None,
        Shown::Failed(error) => {
            return Some(Violation {
                at: read.start,
                kind: Kind::Status,
                what: read.target.kind(),
                x_cache: read.x_cache.clone(),
                text: format!("{}: {error}", describe_read(ctx, read)),
            });
        }
        Shown::Item(None) => vec!["404 for a film that exists".to_owned()],
        Shown::Item(Some(seen)) => check_seen(history, seen, read.start, read.end)
            .err()
            .into_iter()
            .collect(),
        Shown::List(items) => {
            let Target::List(i) = read.target else {
                unreachable!()
            };
            check_list(
                history,
                &ctx.lists[i],
                &baselines[i],
                items,
                read.start,
                read.end,
            )
        }
        Shown::Facets(counts) => {
            let Target::Facets(i) = read.target else {
                unreachable!()
            };
            check_facets(history, &ctx.facets[i], counts, read.start, read.end)
        }
    };
    (!problems.is_empty()).then(|| Violation {
        at: read.start,
        kind: if read.last { Kind::Lost } else { Kind::Stale },
        what: read.target.kind(),
        x_cache: read.x_cache.clone(),
        text: format!("{}: {}", describe_read(ctx, read), problems.join("; ")),
    })
}

fn describe_read(ctx: &Ctx, read: &Read) -> String {
    format!(
        "t={:.3}–{:.3} s, GET {} from {}{}",
        read.start.as_secs_f64(),
        read.end.as_secs_f64(),
        read.target.path(&ctx.lists, &ctx.facets),
        NAMES[read.instance],
        if read.x_cache.is_empty() {
            String::new()
        } else {
            format!(" (X-Cache: {})", read.x_cache)
        }
    )
}

/// The database behind a proxy the test can cut: the proxy and the URL through it.
async fn proxy_database(direct: &str) -> (Proxy, String) {
    let mut url = url::Url::parse(direct).unwrap();
    let target: SocketAddr = (
        url.host_str().unwrap(),
        url.port_or_known_default().unwrap_or(5432),
    )
        .to_socket_addrs()
        .unwrap()
        .next()
        .unwrap();
    let proxy = Proxy::start(target).await;
    url.set_host(Some("127.0.0.1")).unwrap();
    url.set_port(Some(proxy.addr.port())).unwrap();
    (proxy, url.to_string())
}

/// Creates the writers' films (version 0 of each), through the instances in turn.
async fn create_films(ctx: &Ctx) -> History {
    let mut rng = Rng(ctx.seed);
    let mut history = Vec::new();
    for film in 0..FILMS {
        let state = Film::random(&mut rng, film);
        let mut body = state.body(film, 0);
        body["id"] = json!(FIRST_ID + film as i64);
        let instance = film % INSTANCES;
        let start = ctx.now();
        let answer = send(
            ctx.client
                .post(ctx.url(instance, "/api/movies"))
                .bearer_auth(&ctx.token)
                .json(&body),
        )
        .await
        .unwrap();
        let end = ctx.now();
        assert_eq!(
            answer.status,
            201,
            "creating film {film}: {}",
            answer.snippet()
        );
        history.push(vec![Sent {
            film,
            version: 0,
            state,
            instance,
            start,
            end,
            acked: true,
            status: answer.status_text(),
            deferred: answer.deferred,
            problem: None,
        }]);
    }
    history
}

/// The writers' films as the database holds them, read directly (not through the proxy).
async fn database_rows(direct: &str) -> Vec<Result<Seen, String>> {
    let storage = common::open(direct);
    let catalog = common::catalog();
    let movies = catalog.get("movies").unwrap().clone();
    let mut rows = Vec::new();
    for film in 0..FILMS {
        let row = storage
            .get(&movies, &Value::Integer(FIRST_ID + film as i64))
            .await
            .unwrap();
        rows.push(match row {
            None => Err(format!("film {film} is not in the database")),
            Some(row) => {
                let json: serde_json::Map<String, Json> = movies
                    .columns
                    .iter()
                    .zip(&row)
                    .map(|(column, value)| (column.name.clone(), value.to_json()))
                    .collect();
                match parse_row(&Json::Object(json)) {
                    Ok(Listed::Writers(seen)) => Ok(seen),
                    other => Err(format!("film {film} reads back as {other:?}")),
                }
            }
        });
    }
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_read_reflects_every_write_acknowledged_before_it_through_faults() {
    if !PrivateRedis::available() {
        return;
    }
    let Some(direct_url) = common::postgres_url().await else {
        return;
    };
    handler::auth::install_tls_provider();
    let storage = common::open(&direct_url);
    common::import_movies(storage.as_ref(), &common::catalog()).await;
    storage
        .create_user(handler::storage::NewUser {
            email: ADMIN_EMAIL.into(),
            password_hash: Some(handler::auth::password::hash(common::TEST_PASSWORD).unwrap()),
            firebase_uid: None,
            role: "admin".into(),
        })
        .await
        .unwrap();

    let scratch = std::env::temp_dir().join(common::unique_name("smartcache_chaos"));
    let redis_dir = scratch.join("redis");
    let redis_port = free_port();
    let mut redis = Redis {
        server: Some(PrivateRedis::start_snapshots(redis_port, &redis_dir)),
        dir: redis_dir,
        snapshot: scratch.join("saved-aside.rdb"),
    };
    let mut redis_links = Vec::new();
    for _ in 0..INSTANCES {
        redis_links.push(Proxy::start(([127, 0, 0, 1], redis_port).into()).await);
    }
    let (database_link, proxied_url) = proxy_database(&direct_url).await;
    let prefix = common::unique_prefix();
    let mut instances: Vec<Served> = Vec::new();
    for (name, link) in NAMES.iter().zip(&redis_links) {
        let log = std::fs::File::create(scratch.join(format!("instance-{name}.log"))).unwrap();
        let settings = [
            (
                "JWT_SECRET",
                String::from_utf8(common::TEST_JWT_SECRET.to_vec()).unwrap(),
            ),
            ("REDIS_URL", link.redis_url()),
            ("CACHE_PREFIX", prefix.clone()),
            ("RUST_LOG", "warn".to_owned()),
        ];
        instances.push(serve(&proxied_url, &settings, log.into()).await);
    }

    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let login = send(
        client
            .post(instances[0].url("/api/auth/login"))
            .json(&json!({"email": ADMIN_EMAIL, "password": common::TEST_PASSWORD})),
    )
    .await
    .unwrap();
    assert_eq!(login.status, 200, "login: {}", login.snippet());
    let token = serde_json::from_slice::<Json>(&login.body).unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let ctx = Arc::new(Ctx {
        client,
        ports: instances.iter().map(|s| s.port).collect(),
        token,
        t0: Instant::now(),
        stop: AtomicBool::new(false),
        seed,
        others: common::MoviesCsv::load().ids,
        lists: lists(),
        facets: facets(),
    });

    // The other films of each mixed list, before the writers' films exist: they never change.
    let mut baselines = Vec::new();
    for (i, query) in ctx.lists.iter().enumerate() {
        let mut baseline = Vec::new();
        if query.mixed {
            let read = read(&ctx, 0, Target::List(i)).await;
            let Shown::List(items) = read.shown else {
                panic!("{}: {:?}", query.query, read.shown);
            };
            for item in items {
                let Listed::Other(id) = item else {
                    unreachable!("no writer's film exists yet")
                };
                baseline.push(id);
            }
        }
        baselines.push(baseline);
    }
    let mut history = create_films(&ctx).await;

    let writers: Vec<_> = (0..WRITERS)
        .map(|w| tokio::spawn(writer(Arc::clone(&ctx), w)))
        .collect();
    let readers: Vec<_> = (0..READERS)
        .map(|r| tokio::spawn(reader(Arc::clone(&ctx), r)))
        .collect();
    let chaos_started = ctx.now();
    let (timeline, faults) = inject_faults(&ctx, &mut redis, &redis_links, &database_link).await;
    let mut reads = Vec::new();
    for reader in readers {
        reads.extend(reader.await.unwrap());
    }
    for writer in writers {
        for write in writer.await.unwrap() {
            history[write.film].push(write);
        }
    }
    let chaos_time = ctx.now() - chaos_started;
    let (last_reads, unanswered) = final_reads(&ctx).await;
    let run_reads = reads.len();
    reads.extend(last_reads);
    let database = database_rows(&direct_url).await;
    let checked_at = ctx.now();

    // The checks.
    let mut violations: Vec<Violation> = Vec::new();
    for write in history.iter().flatten() {
        if let Some(problem) = &write.problem {
            violations.push(Violation {
                at: write.start,
                kind: Kind::Status,
                what: "write",
                x_cache: String::new(),
                text: format!(
                    "t={:.3}–{:.3} s, PATCH film {} v{} through {}: {problem}",
                    write.start.as_secs_f64(),
                    write.end.as_secs_f64(),
                    write.film,
                    write.version,
                    NAMES[write.instance]
                ),
            });
        }
    }
    for read in &reads {
        violations.extend(check_read(&ctx, &history, &baselines, read));
    }
    for text in unanswered {
        violations.push(Violation {
            at: checked_at,
            kind: Kind::Status,
            what: "read",
            x_cache: String::new(),
            text,
        });
    }
    for row in database {
        let problem = row.and_then(|seen| check_seen(&history, &seen, checked_at, checked_at));
        if let Err(problem) = problem {
            violations.push(Violation {
                at: checked_at,
                kind: Kind::Lost,
                what: "database",
                x_cache: String::new(),
                text: format!("in the database: {problem}"),
            });
        }
    }

    // The counts.
    // Each kind's count, and how it splits by what was wrong.
    let count = |kind| {
        let mut by_what: BTreeMap<&str, usize> = BTreeMap::new();
        for violation in violations.iter().filter(|v| v.kind == kind) {
            *by_what.entry(violation.what).or_insert(0) += 1;
        }
        let total: usize = by_what.values().sum();
        if total == 0 {
            return "0".to_owned();
        }
        let parts: Vec<String> = by_what.iter().map(|(w, n)| format!("{w} {n}")).collect();
        format!("{total} ({})", parts.join(", "))
    };
    let writes: Vec<&Sent> = history.iter().flatten().filter(|w| w.version > 0).collect();
    let acked = writes.iter().filter(|w| w.acked).count();
    let deferred = writes.iter().filter(|w| w.deferred).count();
    let refused = writes
        .iter()
        .filter(|w| w.status == "503 with Retry-After")
        .count();
    let failed = writes.len() - acked - refused;
    let during = &reads[..run_reads];
    let unavailable = during
        .iter()
        .filter(|r| matches!(r.shown, Shown::Unavailable))
        .count();
    let mut outcomes: BTreeMap<&str, usize> = BTreeMap::new();
    for read in during {
        *outcomes.entry(read.x_cache.as_str()).or_insert(0) += 1;
    }
    let outcomes: Vec<String> = outcomes
        .iter()
        .map(|(outcome, n)| format!("{}={n}", if outcome.is_empty() { "none" } else { outcome }))
        .collect();
    let fault_counts: Vec<String> = faults
        .iter()
        .map(|(fault, n)| format!("{} {n}", fault.name()))
        .collect();
    let summary = format!(
        "chaos: {:.1} s of writes, reads and faults (seed {seed}); {} reads ({unavailable} \
         answered 503, X-Cache {}), then {} final reads; {} writes: {acked} acknowledged \
         ({deferred} with X-Cache-Invalidation: deferred), {refused} refused or unknown (503 \
         with Retry-After), {failed} otherwise; faults: {} ({}); stale reads {}, lost \
         acknowledged writes {}, forbidden statuses or no answer {}",
        chaos_time.as_secs_f64(),
        run_reads,
        outcomes.join(" "),
        reads.len() - run_reads,
        writes.len(),
        faults.values().sum::<usize>(),
        fault_counts.join(", "),
        count(Kind::Stale),
        count(Kind::Lost),
        count(Kind::Status),
    );
    eprintln!("{summary}");
    let unavailable_at = |reads: &[Read]| {
        spells(
            reads
                .iter()
                .filter(|r| matches!(r.shown, Shown::Unavailable))
                .map(|r| r.start)
                .collect(),
        )
    };
    let mut by_outcome: BTreeMap<&str, usize> = BTreeMap::new();
    for violation in violations.iter().filter(|v| v.kind != Kind::Status) {
        *by_outcome.entry(violation.x_cache.as_str()).or_insert(0) += 1;
    }
    let details = format!(
        "stale and lost reads by X-Cache: {by_outcome:?}\n\
         503 with Retry-After: reads {}; writes {}",
        unavailable_at(during),
        spells(
            writes
                .iter()
                .filter(|w| w.status == "503 with Retry-After")
                .map(|w| w.start)
                .collect()
        )
    );
    eprintln!("{details}");
    let mut faults_text = String::new();
    for (at, what) in &timeline {
        let _ = write!(faults_text, "\n  t={:.3} s {what}", at.as_secs_f64());
    }
    eprintln!("fault timeline:{faults_text}");

    violations.sort_by_key(|v| (v.kind, v.at));
    let mut first = String::new();
    // The first few of each kind, of each thing read or written, and of each X-Cache outcome.
    let groups: BTreeSet<(Kind, &str, &str)> = violations
        .iter()
        .map(|v| (v.kind, v.what, v.x_cache.as_str()))
        .collect();
    for (kind, what, x_cache) in groups {
        let shown = violations
            .iter()
            .filter(|v| v.kind == kind && v.what == what && v.x_cache == x_cache);
        for violation in shown.take(3) {
            let _ = write!(first, "\n  [{kind:?} {what}] {}", violation.text);
        }
    }
    assert!(
        violations.is_empty(),
        "{summary}\n{details}\nthe first violations of each kind:{first}\n\
         fault timeline:{faults_text}\ninstance logs in {}",
        scratch.display()
    );
    drop(instances);
    drop(redis);
    let _ = std::fs::remove_dir_all(&scratch);
    assert!(
        faults.len() == Fault::CYCLE.len() || std::env::var("CHAOS_FAULTS").is_ok(),
        "every kind of fault happened: {faults:?}"
    );
}
