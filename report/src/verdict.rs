//! Per-connection verdicts and the scenario's truth table: rows are clients (`from`), columns are
//! targets (`to`), each cell one mark for every connection between them.
//!
//! A connection *met its expectations* when every expectation that names its connect id — the
//! step's own `expect`, any `check` step's `connections`, the top-level `expect.connections` —
//! holds for it ([`check_connection`] on that one connection). Expectations on tunnels, conntrack
//! and counters are not about one connection; they appear among the scenario's failures, not here.
//!
//! The legend ([`LEGEND`]), worst mark winning in a cell:
//!
//! | mark | meaning |
//! | --- | --- |
//! | `.` | every connection ended `ok` and met its expectations |
//! | `X` | met its expectations, and at least one was `denied` by policy (the rest `ok`) |
//! | `-` | met its expectations, and at least one ended `refused`, `reset`, `timeout` or `error` |
//! | `!` | at least one did not meet an expectation, or is missing (its step was skipped, or the backend reported fewer connections than the step opens, or more) |
//!
//! A connection with no expectation at all has nothing to miss: it is `.`, `X` or `-` by its
//! outcome.

use ambient_scenarios::expect::check::check_connection;
use ambient_scenarios::outcome::{ConnOutcome, Connection, Outcome};
use ambient_scenarios::world::{Action, Connect, Step, World};

/// One connection's (or one cell's) mark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Mark {
    Ok,
    Denied,
    Other,
    Unexpected,
}

impl Mark {
    pub fn symbol(self) -> char {
        match self {
            Mark::Ok => '.',
            Mark::Denied => 'X',
            Mark::Other => '-',
            Mark::Unexpected => '!',
        }
    }

    fn of(c: &Connection) -> Mark {
        match c.outcome {
            ConnOutcome::Ok => Mark::Ok,
            ConnOutcome::Denied => Mark::Denied,
            _ => Mark::Other,
        }
    }
}

/// The legend as `(symbol, meaning)`, in the order the reports print it.
pub const LEGEND: &[(char, &str)] = &[
    ('.', "every connection ended ok and met its expectations"),
    ('X', "met its expectations, and at least one was denied by policy (the rest ok)"),
    ('-', "met its expectations, and at least one ended refused, reset, timeout or error"),
    (
        '!',
        "at least one did not meet an expectation, or is missing (its step was skipped, or the backend reported a different number of connections than the step opens)",
    ),
];

/// The connections of one connect step and how each fared.
#[derive(Debug, Clone)]
pub struct StepVerdict<'a> {
    pub step: &'a Step,
    pub connect: &'a Connect,
    /// The Outcome's connections with this step's id, in order, each with its mark.
    pub records: Vec<(&'a Connection, Mark)>,
    /// Connections the step opens that the Outcome does not have.
    pub missing: u64,
}

impl StepVerdict<'_> {
    /// Every mark of the step, missing connections as [`Mark::Unexpected`].
    pub fn marks(&self) -> impl Iterator<Item = Mark> + '_ {
        let missing = (0..self.missing).map(|_| Mark::Unexpected);
        self.records.iter().map(|(_, m)| *m).chain(missing)
    }
}

/// Verdicts for every connect step of a World, against an Outcome.
pub fn steps<'a>(world: &'a World, outcome: &'a Outcome) -> Vec<StepVerdict<'a>> {
    let mut out = Vec::new();
    for (step, connect) in world.connects() {
        let id = connect.id.as_str();
        let mut blocks: Vec<&ambient_scenarios::expect::ConnExpect> =
            connect.expect.iter().collect();
        for s in &world.steps {
            if let Action::Check(check) = &s.action {
                blocks.extend(check.expect.connections.get(id));
            }
        }
        blocks.extend(world.expect.connections.get(id));
        let count = u64::from(connect.repeat.count());
        let found: Vec<&Connection> = outcome.connections_with_id(id).collect();
        let records = found
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let extra = i as u64 >= count;
                let fails =
                    blocks.iter().any(|e| !check_connection("", id, e, &[*c], 1).is_empty());
                (*c, if extra || fails { Mark::Unexpected } else { Mark::of(c) })
            })
            .collect();
        let missing = count.saturating_sub(found.len() as u64);
        out.push(StepVerdict { step, connect, records, missing });
    }
    out
}

/// How many connections a World's connect steps open.
pub fn expected_connections(world: &World) -> u64 {
    world.connects().map(|(_, c)| u64::from(c.repeat.count())).sum()
}

/// The from × to table of one scenario.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TruthTable {
    /// Clients, in the order they first appear in the steps.
    pub rows: Vec<String>,
    /// Targets (as the Outcome's `to` names them), in the order they first appear.
    pub columns: Vec<String>,
    /// `cells[row][column]`; `None` where no connection went.
    pub cells: Vec<Vec<Option<Mark>>>,
    /// Connections that met their expectations (marks other than `!`).
    pub as_expected: u64,
    /// Connections the steps open.
    pub expected: u64,
}

impl TruthTable {
    pub fn build(world: &World, outcome: &Outcome) -> TruthTable {
        let verdicts = steps(world, outcome);
        let mut rows: Vec<String> = Vec::new();
        let mut columns: Vec<String> = Vec::new();
        for v in &verdicts {
            let (from, to) = (v.connect.from.label(), v.connect.to.label.clone());
            if !rows.contains(&from) {
                rows.push(from);
            }
            if !columns.contains(&to) {
                columns.push(to);
            }
        }
        let mut cells = vec![vec![None; columns.len()]; rows.len()];
        let mut as_expected = 0;
        for v in &verdicts {
            let r = rows.iter().position(|x| *x == v.connect.from.label()).unwrap_or(0);
            let c = columns.iter().position(|x| *x == v.connect.to.label).unwrap_or(0);
            for m in v.marks() {
                let cell: &mut Option<Mark> = &mut cells[r][c];
                *cell = Some(cell.map_or(m, |old| old.max(m)));
                as_expected += u64::from(m != Mark::Unexpected);
            }
        }
        TruthTable { rows, columns, cells, as_expected, expected: expected_connections(world) }
    }
}

/// Repetitions of one connect step that tell the same story, collapsed: each distinct
/// connection with the 1-based positions (among the step's connections) that look like it.
pub fn collapse<'a>(connections: &[&'a Connection]) -> Vec<(Vec<usize>, &'a Connection)> {
    let mut out: Vec<(Vec<usize>, &Connection)> = Vec::new();
    for (i, c) in connections.iter().enumerate() {
        match out.iter_mut().find(|(_, seen)| *seen == *c) {
            Some((which, _)) => which.push(i + 1),
            None => out.push((vec![i + 1], c)),
        }
    }
    out
}

/// `1`, `2–10`, `1, 3, 5–7`.
pub fn ranges(which: &[usize]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < which.len() {
        let mut j = i;
        while j + 1 < which.len() && which[j + 1] == which[j] + 1 {
            j += 1;
        }
        parts.push(if i == j {
            which[i].to_string()
        } else {
            format!("{}–{}", which[i], which[j])
        });
        i = j + 1;
    }
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::fixture;
    use ambient_scenarios::load::load_str;

    #[test]
    fn marks_order_from_best_to_worst() {
        assert!(Mark::Ok < Mark::Denied && Mark::Denied < Mark::Other);
        assert!(Mark::Other < Mark::Unexpected);
        let symbols: String = LEGEND.iter().map(|(s, _)| *s).collect();
        assert_eq!(symbols, ".X-!");
        for m in [Mark::Ok, Mark::Denied, Mark::Other, Mark::Unexpected] {
            assert!(LEGEND.iter().any(|(s, _)| *s == m.symbol()));
        }
    }

    #[test]
    fn the_table_marks_each_pair_by_its_worst_connection() {
        let world = load_str("t.yaml", fixture::MESH).into_result().unwrap();
        let outcome = fixture::mesh_outcome_as_expected(&world);
        let t = TruthTable::build(&world, &outcome);
        assert_eq!(t.rows, ["sleep.default", "legacy.default"]);
        assert_eq!(t.columns, ["echo.default:80", "web:443", "server.default:8080"]);
        let sym = |r: usize, c: usize| t.cells[r][c].map(Mark::symbol);
        // sleep → echo: `first` and `pooled` ok, `denied` denied as expected.
        assert_eq!(sym(0, 0), Some('X'));
        assert_eq!(sym(0, 1), Some('.'));
        assert_eq!(sym(0, 2), None);
        assert_eq!(sym(1, 0), None);
        assert_eq!(sym(1, 1), Some('.'));
        assert_eq!(sym(1, 2), Some('.'));
        assert_eq!((t.as_expected, t.expected), (8, 8));

        // One pooled connection reset where ok was expected: `!`, and one fewer as expected.
        let mut bad = outcome.clone();
        bad.connections[2].outcome = ConnOutcome::Reset;
        let t = TruthTable::build(&world, &bad);
        assert_eq!(t.cells[0][0], Some(Mark::Unexpected));
        assert_eq!((t.as_expected, t.expected), (7, 8));

        // A connection that the backend never reported is missing: `!` too.
        let mut short = outcome.clone();
        short.connections.retain(|c| c.id != "plain");
        let t = TruthTable::build(&world, &short);
        assert_eq!(t.cells[1][0..3], [None, Some(Mark::Ok), Some(Mark::Unexpected)]);
        assert_eq!((t.as_expected, t.expected), (7, 8));

        // One more than the step opens: the extra one is `!`, the count stays 8.
        let mut long = outcome.clone();
        let extra = long.connections.last().unwrap().clone();
        long.connections.push(extra);
        let t = TruthTable::build(&world, &long);
        assert_eq!(t.cells[1][1], Some(Mark::Unexpected));
        assert_eq!((t.as_expected, t.expected), (8, 8));
    }

    #[test]
    fn an_unexpected_outcome_without_an_outcome_expectation_is_still_judged_by_the_others() {
        let world = load_str("t.yaml", fixture::MESH).into_result().unwrap();
        let mut outcome = fixture::mesh_outcome_as_expected(&world);
        // `web` only expects `path: passthrough`: a timeout on that path is `-`, not `!`.
        let web = outcome.connections.iter_mut().find(|c| c.id == "web").unwrap();
        web.outcome = ConnOutcome::Timeout;
        let t = TruthTable::build(&world, &outcome);
        assert_eq!(t.cells[0][1], Some(Mark::Other));
        // The top-level expectation on `first` (server_peer) counts as much as the step's own.
        let first = outcome.connections.iter_mut().find(|c| c.id == "first").unwrap();
        first.server_peer = None;
        let t = TruthTable::build(&world, &outcome);
        assert_eq!(t.cells[0][0], Some(Mark::Unexpected));
    }
}
