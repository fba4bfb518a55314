//! Retrieval quality on a small realistic corpus (company handbook, technical notes, general knowledge) with the
//! real sentence embedder, plus persistence of the BM25 index and the embedding cache.

use std::cell::Cell;
use std::collections::HashSet;

use sdg::models::local::embed::Embedder;
use sdg::retrieve::{
    Bm25Index, DenseIndex, Hit, Passage, RetrieveMode, RetrieveSettings, Retriever, embed_passages_cached,
};

const MODEL: &str = "all-minilm-l6-v2";

/// 20 topics, 4 passages each. Neighbouring topics share vocabulary (coffee and tea, volcanoes and earthquakes,
/// sleep and caffeine, aqueducts and volcanic ash) so that the distractors are real.
const PASSAGES: &[(&str, &str)] = &[
    (
        "expense-1",
        "Employees submit travel expenses through form EX-12 within 30 days of returning. Personal car use is \
         reimbursed at 0.58 euros per kilometre, and the trip's start and end addresses must be listed on the form.",
    ),
    (
        "expense-2",
        "Meals while travelling are covered up to a daily allowance of 45 euros in most cities and 60 euros in \
         London, Paris and Zurich. Alcohol is never reimbursed, even when it is part of a client dinner.",
    ),
    (
        "expense-3",
        "Receipts must be photographed and attached to the claim; for purchases over 250 euros the original paper \
         receipt must also be sent to the finance office in Lyon. Claims without receipts are returned unpaid.",
    ),
    (
        "expense-4",
        "Corporate credit cards are issued to staff who travel more than six times a year. The monthly statement has \
         to be reconciled in the finance portal before the fifth working day of the following month.",
    ),
    (
        "remote-1",
        "To reach internal systems from home, install the WireGuard client and import the configuration file from \
         the IT portal. The tunnel listens on UDP port 51820, so hotel networks that block UDP may need the TCP \
         fallback.",
    ),
    (
        "remote-2",
        "Remote employees may work from another country for up to 20 working days per year. Longer stays need \
         approval from HR because of tax and social-security rules in the host country.",
    ),
    (
        "remote-3",
        "The company pays a one-time home office allowance of 400 euros for a desk, chair or monitor. Equipment \
         bought with the allowance stays with the employee.",
    ),
    (
        "remote-4",
        "Laptops must lock the screen after five minutes of inactivity and use full-disk encryption. Lost or stolen \
         devices are reported to the security desk within 24 hours so they can be wiped remotely.",
    ),
    (
        "leave-1",
        "The parent who gives birth receives 16 weeks of fully paid maternity leave, which can start up to four \
         weeks before the expected due date.",
    ),
    (
        "leave-2",
        "The other parent, including adoptive and same-sex partners, is entitled to eight weeks of paid leave that \
         can be taken in blocks during the child's first year.",
    ),
    (
        "leave-3",
        "Annual vacation is 25 days, plus the public holidays of the office location. Up to five unused days may be \
         carried over to the next year; the rest expire on March 31.",
    ),
    (
        "leave-4",
        "Sick days do not need a doctor's note for absences of up to three consecutive days. From the fourth day, a \
         medical certificate must be uploaded to the HR system.",
    ),
    (
        "bread-1",
        "A sourdough starter is a culture of wild yeast and lactic acid bacteria kept alive by regular feedings of \
         flour and water. A healthy starter roughly doubles in volume four to six hours after feeding.",
    ),
    (
        "bread-2",
        "Loaves that come out heavy, gummy and flat are usually under-proofed: the dough did not ferment long enough \
         for the gluten network to fill with gas. A weak, sluggish culture has the same effect.",
    ),
    (
        "bread-3",
        "Baking in a preheated Dutch oven traps steam around the dough during the first twenty minutes, which keeps \
         the crust soft long enough for good oven spring. Remove the lid afterwards to brown the crust.",
    ),
    (
        "bread-4",
        "Bakers express recipes in baker's percentages: every ingredient is weighed relative to the flour. A dough \
         with 750 grams of water per kilogram of flour has 75 percent hydration.",
    ),
    (
        "coffee-1",
        "Espresso is brewed by forcing water at about nine bars of pressure through a puck of finely ground coffee. \
         A typical double shot uses 18 grams of grounds and yields about 36 grams of liquid in 25 to 30 seconds.",
    ),
    (
        "coffee-2",
        "A shot that tastes harsh and dry has been over-extracted: the water pulled too many compounds out of the \
         grounds. Grinding coarser or stopping the shot earlier fixes it, while sour, thin shots call for the \
         opposite.",
    ),
    (
        "coffee-3",
        "Coffee beans are at their best between one and four weeks after roasting. Store them whole in an airtight \
         container away from light, and grind only right before brewing.",
    ),
    (
        "coffee-4",
        "Limescale from hard water clogs boilers and valves. Descale the machine every two to three months with a \
         citric acid solution, or use filtered water to slow the build-up.",
    ),
    (
        "tea-1",
        "Green tea leaves are delicate and turn bitter and grassy in boiling water. Brew them at 70 to 80 degrees \
         Celsius for two to three minutes.",
    ),
    (
        "tea-2",
        "Black tea is fully oxidised, which gives it a darker colour and a stronger flavour. It tolerates water \
         straight off the boil and steeps for three to five minutes.",
    ),
    (
        "tea-3",
        "Matcha is shade-grown tea ground into a fine powder and whisked with a bamboo chasen rather than steeped, \
         so the whole leaf is consumed.",
    ),
    (
        "tea-4",
        "Oolong sits between green and black tea in oxidation. Rolled oolong leaves can be infused five or six \
         times, each infusion revealing a slightly different taste.",
    ),
    (
        "volcano-1",
        "The 1883 eruption of Krakatoa in Indonesia was heard nearly 4,800 kilometres away, and its ash lowered \
         global temperatures for the following year.",
    ),
    (
        "volcano-2",
        "Shield volcanoes such as Mauna Loa are built from runny basaltic lava that flows far before cooling, giving \
         them broad, gentle slopes.",
    ),
    (
        "volcano-3",
        "Pyroclastic flows are avalanches of hot gas, ash and rock that race down a volcano's flanks at over 100 \
         kilometres per hour; they destroyed Pompeii and Herculaneum in 79 AD.",
    ),
    (
        "volcano-4",
        "Volcanologists watch for swelling of the ground, swarms of small tremors and rising sulfur dioxide \
         emissions as warning signs that magma is moving toward the surface.",
    ),
    (
        "quake-1",
        "The moment magnitude scale replaced the Richter scale for large earthquakes because it measures the total \
         energy released by the fault slip. Each whole step is about 32 times more energy.",
    ),
    (
        "quake-2",
        "Most earthquakes happen along plate boundaries, where tectonic plates grind past, collide with or pull \
         away from one another. The San Andreas fault is a transform boundary.",
    ),
    (
        "quake-3",
        "Seismometers record primary waves first, because they travel fastest through rock, followed by slower \
         secondary waves. The delay between the two tells how far away the quake occurred.",
    ),
    (
        "quake-4",
        "Buildings in seismic zones use base isolators and flexible steel frames so that they sway instead of \
         cracking when the ground shakes.",
    ),
    (
        "bees-1",
        "A honeybee colony has a single queen, thousands of female workers and, in summer, a few hundred drones \
         whose only role is to mate.",
    ),
    (
        "bees-2",
        "Forager bees tell their nest-mates where flowers are with the waggle dance: the angle of the run gives the \
         direction relative to the sun, its duration the distance.",
    ),
    (
        "bees-3",
        "The parasitic mite Varroa destructor feeds on developing bees and spreads viruses; untreated colonies \
         often collapse within two or three years.",
    ),
    (
        "bees-4",
        "Beekeepers calm a hive with smoke before opening it, because smoke masks the alarm pheromone that guard \
         bees release.",
    ),
    (
        "plants-1",
        "In photosynthesis, chlorophyll in the chloroplasts captures light energy and uses it to turn carbon \
         dioxide and water into glucose, releasing oxygen as a by-product.",
    ),
    (
        "plants-2",
        "Leaves change colour in autumn because trees stop producing chlorophyll, revealing yellow carotenoids that \
         were there all along, while red anthocyanins are newly made.",
    ),
    (
        "plants-3",
        "Roots absorb water by osmosis, and transpiration through the stomata in leaves pulls the water column up \
         the xylem to the top of even the tallest trees.",
    ),
    (
        "plants-4",
        "Legumes such as beans and clover host nitrogen-fixing bacteria in root nodules, which is why farmers rotate \
         them with cereals to restore soil fertility.",
    ),
    (
        "rust-1",
        "Rust's borrow checker enforces that a value has either one mutable reference or any number of shared \
         references at a time, which rules out data races at compile time.",
    ),
    (
        "rust-2",
        "When a Rust value goes out of scope its destructor runs automatically through the Drop trait, so files, \
         locks and memory are released without a garbage collector.",
    ),
    (
        "rust-3",
        "Functions that can fail return Result, and the question-mark operator propagates the error to the caller \
         instead of unwinding with an exception.",
    ),
    (
        "rust-4",
        "Cargo, Rust's build tool, resolves dependencies from crates.io, records the exact versions in Cargo.lock \
         and runs unit tests with cargo test.",
    ),
    (
        "pg-1",
        "PostgreSQL never overwrites rows in place; updates leave dead tuples behind, which VACUUM later reclaims. \
         The autovacuum daemon triggers when dead rows exceed autovacuum_vacuum_scale_factor of the table.",
    ),
    (
        "pg-2",
        "A B-tree index speeds up equality and range lookups, but every extra index slows down inserts and updates. \
         Use EXPLAIN ANALYZE to confirm that the planner actually uses it.",
    ),
    (
        "pg-3",
        "Point-in-time recovery combines a base backup with archived write-ahead log segments, so the database can \
         be restored to any moment before an accidental DROP TABLE.",
    ),
    (
        "pg-4",
        "Connection poolers such as PgBouncer keep a small set of server connections open and share them among many \
         clients, since each PostgreSQL backend process uses several megabytes of memory.",
    ),
    (
        "k8s-1",
        "A Deployment keeps the requested number of pod replicas running and replaces them gradually during a \
         rolling update. If the new version misbehaves, kubectl rollout undo returns to the previous revision.",
    ),
    (
        "k8s-2",
        "Liveness probes restart containers that hang, while readiness probes keep traffic away from pods that are \
         still starting up.",
    ),
    (
        "k8s-3",
        "Resource requests tell the scheduler how much CPU and memory a container needs; a container that exceeds \
         its memory limit is killed with an OOMKilled status.",
    ),
    (
        "k8s-4",
        "Secrets hold passwords and API tokens separately from container images; they are mounted as files or \
         exposed as environment variables inside the pod.",
    ),
    (
        "run-1",
        "Marathon plans build the weekly long run gradually, adding no more than about ten percent per week, up to \
         a longest run of 32 to 35 kilometres three weeks before race day.",
    ),
    (
        "run-2",
        "During the taper, the last two to three weeks before the race, mileage drops sharply while a little \
         intensity is kept, so the legs recover without losing fitness.",
    ),
    (
        "run-3",
        "Runners who start too fast often hit the wall around kilometre 30, when glycogen stores run out; taking 30 \
         to 60 grams of carbohydrate per hour delays it.",
    ),
    (
        "run-4",
        "Easy runs should be slow enough to hold a conversation. Most of an endurance athlete's training happens at \
         this aerobic intensity, with only a small share of intervals.",
    ),
    (
        "bike-1",
        "If the drivetrain rattles when shifting, the rear derailleur probably needs adjusting: turn the barrel \
         adjuster a quarter turn at a time until each sprocket engages cleanly.",
    ),
    (
        "bike-2",
        "A stretched chain wears the cassette and chainrings. Check it with a chain checker tool and replace the \
         chain once it reaches 0.5 percent elongation.",
    ),
    (
        "bike-3",
        "Tubeless tyres are sealed with liquid latex that plugs small punctures automatically, so they can run at \
         lower pressures without pinch flats.",
    ),
    (
        "bike-4",
        "Disc brake pads should be replaced when the friction material is thinner than about one millimetre. \
         Contaminated pads that squeal and barely slow the wheel must be replaced as well.",
    ),
    (
        "aqueduct-1",
        "Roman aqueducts carried water by gravity alone, descending at gradients as gentle as a few centimetres per \
         hundred metres over dozens of kilometres.",
    ),
    (
        "aqueduct-2",
        "The Pont du Gard in southern France is a three-tiered aqueduct bridge built in the first century to carry \
         water across the Gardon river to Nîmes.",
    ),
    (
        "aqueduct-3",
        "Inside the city, water from the aqueducts filled a castellum divisorium that distributed it to public \
         fountains, baths and, for a fee, private houses through lead pipes.",
    ),
    (
        "aqueduct-4",
        "Roman builders used a hydraulic concrete made with volcanic ash from Pozzuoli, which set even under water \
         and still holds in harbour structures today.",
    ),
    (
        "print-1",
        "Johannes Gutenberg's movable-type press, developed in Mainz around 1450, used metal type cast from an \
         alloy of lead, tin and antimony, together with an oil-based ink.",
    ),
    (
        "print-2",
        "The Gutenberg Bible, finished around 1455, has 42 lines per page; about 49 copies survive, some printed on \
         vellum and some on paper.",
    ),
    (
        "print-3",
        "Within fifty years of its invention, printing spread to more than 250 European cities, and books became so \
         cheap that literacy and the Reformation spread with them.",
    ),
    (
        "print-4",
        "Woodblock printing was used in China centuries earlier; the Diamond Sutra of 868 is the oldest dated \
         printed book that survives.",
    ),
    (
        "solar-1",
        "Photovoltaic cells convert sunlight directly into electricity when photons knock electrons loose in a \
         silicon semiconductor. Typical rooftop modules are 20 to 22 percent efficient.",
    ),
    (
        "solar-2",
        "In the northern hemisphere, modules facing south at a tilt close to the site's latitude collect the most \
         energy over a year; a north-facing array can lose a third or more of the yield.",
    ),
    (
        "solar-3",
        "An inverter turns the panels' direct current into alternating current for the household grid. \
         Microinverters on each panel limit the losses when one panel is shaded.",
    ),
    (
        "solar-4",
        "Home batteries store midday surplus for the evening. Without one, surplus power is fed into the grid, often \
         at a feed-in tariff well below the retail price of electricity.",
    ),
    (
        "heatpump-1",
        "A heat pump moves heat instead of generating it: a refrigerant evaporates in the outdoor unit, absorbing \
         energy from the air even below zero, and releases it indoors when compressed.",
    ),
    (
        "heatpump-2",
        "The coefficient of performance compares the heat delivered with the electricity used; a COP of 3 means \
         three kilowatt-hours of heat for each kilowatt-hour consumed.",
    ),
    (
        "heatpump-3",
        "Ground-source heat pumps draw on the stable temperature a few metres underground through buried loops, \
         which keeps their efficiency high in cold spells.",
    ),
    (
        "heatpump-4",
        "Heat pumps work best with low flow temperatures, so large radiators or underfloor heating and good \
         insulation matter more than with a gas boiler.",
    ),
    (
        "sleep-1",
        "The circadian clock in the hypothalamus is reset each morning by light reaching the eyes; melatonin rises \
         in the evening as daylight fades.",
    ),
    (
        "sleep-2",
        "Crossing several time zones leaves the body clock out of step with local time. Seeking bright morning \
         light after travelling east and evening light after travelling west shifts it fastest.",
    ),
    (
        "sleep-3",
        "A night's sleep cycles through light, deep and REM stages about every 90 minutes; most deep sleep happens \
         in the first half of the night.",
    ),
    (
        "sleep-4",
        "Caffeine blocks adenosine, the molecule that builds sleep pressure during the day, and its half-life of \
         about five hours means an afternoon coffee can still delay sleep at night.",
    ),
];

/// Queries with their relevant passages. The first ten are keyword-heavy (names, numbers, jargon); the other ten
/// are natural questions that share only a word or two with their answer, three of them (leave, bread,
/// photosynthesis) none at all.
const QUERIES: &[(&str, &[&str])] = &[
    ("EX-12 form mileage reimbursement per kilometre", &["expense-1"]),
    ("WireGuard UDP port 51820 blocked at the hotel", &["remote-1"]),
    ("autovacuum_vacuum_scale_factor dead tuples", &["pg-1"]),
    ("Gutenberg Bible 42 lines per page", &["print-2"]),
    ("Pont du Gard over the Gardon", &["aqueduct-2"]),
    ("Krakatoa 1883", &["volcano-1"]),
    ("moment magnitude versus Richter", &["quake-1"]),
    ("kubectl rollout undo", &["k8s-1"]),
    ("Varroa destructor", &["bees-3"]),
    ("PgBouncer", &["pg-4"]),
    ("How much time off do mothers and fathers get when a baby arrives?", &["leave-1", "leave-2"]),
    ("Why is my homemade bread dense and sticky inside?", &["bread-2"]),
    ("How do green plants make food out of sunshine?", &["plants-1"]),
    ("Tips for beating jet lag after crossing time zones", &["sleep-2"]),
    ("Is it worth putting panels on a north-facing roof?", &["solar-2"]),
    ("What machine pulls warmth out of freezing outside air to heat a home?", &["heatpump-1"]),
    ("How far should my longest training run be before a 42 km race?", &["run-1"]),
    ("My gears clatter and skip when shifting on the bicycle", &["bike-1"]),
    ("How did the Romans bring water into their towns?", &["aqueduct-1", "aqueduct-2", "aqueduct-3"]),
    ("Why does my espresso taste so bitter?", &["coffee-2"]),
];

fn passages() -> Vec<Passage> {
    PASSAGES.iter().map(|(id, text)| Passage::new(*id, *text)).collect()
}

/// Fraction of a query's relevant passages found in `hits`, averaged over queries; also the misses, for the log.
fn recall(passages: &[Passage], results: &[Vec<Hit>]) -> (f64, Vec<String>) {
    let mut total = 0.0;
    let mut misses = Vec::new();
    for ((query, relevant), hits) in QUERIES.iter().zip(results) {
        let got: Vec<&str> = hits.iter().map(|h| passages[h.index].id.as_str()).collect();
        let found = relevant.iter().filter(|id| got.contains(id)).count();
        total += found as f64 / relevant.len() as f64;
        if found < relevant.len() {
            misses.push(format!("{query:?}: want {relevant:?}, got {got:?}"));
        }
    }
    (total / QUERIES.len() as f64, misses)
}

#[test]
fn corpus_is_as_described() {
    let ids: HashSet<&str> = PASSAGES.iter().map(|p| p.0).collect();
    assert_eq!(ids.len(), PASSAGES.len(), "ids are unique");
    assert!(PASSAGES.len() >= 60);
    let topics: HashSet<&str> = PASSAGES.iter().filter_map(|p| p.0.split('-').next()).collect();
    assert_eq!(topics.len(), 20);
    assert_eq!(QUERIES.len(), 20);
    for (query, relevant) in QUERIES {
        assert!((1..=3).contains(&relevant.len()), "{query}");
        assert!(relevant.iter().all(|id| ids.contains(id)), "{query}");
    }
}

#[test]
fn hybrid_recall_at_5_beats_bm25_with_the_real_embedder() {
    let passages = passages();
    let root = tempfile::tempdir().unwrap();
    let embedder = Embedder::load(&sdg::testkit::catalog_model(MODEL)).unwrap();
    let calls = Cell::new(0);
    let embed = |texts: &[&str]| {
        calls.set(calls.get() + 1);
        embedder.embed(texts).map_err(|e| e.to_string())
    };
    let vectors = embed_passages_cached(&root.path().join("emb"), MODEL, &passages, &embed).unwrap();
    assert_eq!(calls.get(), 2, "80 passages in batches of 64");
    // The second call is served from the cache file.
    assert_eq!(embed_passages_cached(&root.path().join("emb"), MODEL, &passages, &embed).unwrap(), vectors);
    assert_eq!(calls.get(), 2);

    let bm25 = Bm25Index::open_or_build(&root.path().join("bm25"), &passages).unwrap();
    let retriever = Retriever::new(bm25, Some(DenseIndex::new(vectors))).unwrap();
    let texts: Vec<&str> = QUERIES.iter().map(|q| q.0).collect();
    let query_vectors = embedder.embed(&texts).unwrap();

    let mut recalls = Vec::new();
    for mode in [RetrieveMode::Bm25, RetrieveMode::Dense, RetrieveMode::Hybrid] {
        // The shipped defaults (top_k 5, rrf_k 60, 50 candidates, no thresholds): only the mode changes.
        let settings = RetrieveSettings { mode, ..Default::default() };
        assert_eq!(settings.top_k, 5);
        let results: Vec<Vec<Hit>> =
            texts.iter().zip(&query_vectors).map(|(q, v)| retriever.retrieve(q, Some(v), &settings).unwrap()).collect();
        assert!(results.iter().all(|r| r.len() <= 5));
        let (r, misses) = recall(&passages, &results);
        println!("recall@5 {mode}: {r:.3}");
        for m in misses {
            println!("  miss {m}");
        }
        recalls.push(r);
    }
    let (bm25, dense, hybrid) = (recalls[0], recalls[1], recalls[2]);
    println!("recall@5: bm25 {bm25:.3}, dense {dense:.3}, hybrid {hybrid:.3}");
    assert!(hybrid >= bm25, "hybrid {hybrid} < bm25 {bm25}");
    assert!(bm25 >= 0.8, "bm25 {bm25}");
    assert!(hybrid >= 0.8, "hybrid {hybrid}");
}

#[test]
fn bm25_index_is_reused_until_a_passage_changes() {
    let mut passages = passages();
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("index");
    let search_all =
        |index: &Bm25Index| -> Vec<Vec<Hit>> { QUERIES.iter().map(|(q, _)| index.search(q, 5).unwrap()).collect() };

    let built = Bm25Index::open_or_build(&dir, &passages).unwrap();
    assert!(!built.reused());
    let first = search_all(&built);
    drop(built);

    let reopened = Bm25Index::open_or_build(&dir, &passages).unwrap();
    assert!(reopened.reused());
    assert_eq!(search_all(&reopened), first);
    drop(reopened);

    let pg = passages.iter().position(|p| p.id == "pg-4").unwrap();
    passages[pg].text = "Connection pooling with Odyssey keeps backend processes few.".into();
    let rebuilt = Bm25Index::open_or_build(&dir, &passages).unwrap();
    assert!(!rebuilt.reused());
    assert!(rebuilt.search("PgBouncer", 5).unwrap().is_empty());
    assert_eq!(rebuilt.search("Odyssey pooling", 5).unwrap()[0].index, pg);
    drop(rebuilt);
    assert!(Bm25Index::open_or_build(&dir, &passages).unwrap().reused());
}
