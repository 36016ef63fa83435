using System.Globalization;

namespace HighlanderPG.FaultRun;

internal sealed record Overlap(string Singleton, Life First, Life Second, long From, long To, int Round, bool Allowed, bool Witnessed);

internal sealed record StaleRow(string Table, DbRow Row, long HigherEpoch, int Round);

internal sealed class FaultCheck(FaultRecord fault, RoundRecord round)
{
    public FaultRecord Fault { get; } = fault;
    public RoundRecord Round { get; } = round;
    public List<string> Failures { get; } = [];
    public List<double> Unavailability { get; } = [];
    public int OverlapsAllowed { get; set; }
    public int OverlapsForbidden { get; set; }
    public int OverlapsWitnessed { get; set; }
    public int StaleGuarded { get; set; }
    public int UnguardedInterleaved { get; set; }
    public double? Recovery => Round.RecoveredAt is { } at ? Mono.Seconds(at - Round.LastFaultEnd) : null;
    public bool Passed => Failures.Count == 0;
}

internal sealed class CheckResult
{
    public List<FaultCheck> Checks { get; } = [];
    public List<Overlap> Overlaps { get; } = [];
    public List<StaleRow> Stale { get; } = [];
    public List<StaleRow> Interleaved { get; } = [];
    public List<string> Unattributed { get; } = [];
    public int Lives { get; set; }

    /// <summary>Apparent overlaps whose earlier life's end was an upper bound and that the kernel lock shows were not overlaps.</summary>
    public int KernelCleared { get; set; }
    public int GuardedRows { get; set; }
    public int UnguardedRows { get; set; }
    public int Passed => Checks.Count(c => c.Passed);
    public int Failed => Checks.Count(c => !c.Passed) + Unattributed.Count;
}

/// <summary>
/// The checker over the history and the tables. Per fault: overlaps of two children of one singleton on the one clock
/// (must be 0 unless the README says the fault needs fencing), stale guarded writes committed (must be 0 always),
/// unguarded writes interleaved (counted), unavailability of the singletons it took away, and whether every singleton
/// ran exactly once again within its bound.
/// </summary>
internal static class Checker
{
    public static CheckResult Check(Settings settings, Cluster cluster, List<RoundRecord> rounds, List<HistoryEvent> events, List<DbRow> guarded, List<DbRow> unguarded)
    {
        var result = new CheckResult { GuardedRows = guarded.Count, UnguardedRows = unguarded.Count };
        var book = new LifeBook();
        foreach (var e in events)
        {
            book.Feed(e);
        }

        var end = events.Count > 0 ? events[^1].Mono : Mono.Now();
        foreach (var open in book.Open.ToList())
        {
            book.ProcessEnded(open.Pid, end, "run-end");
        }

        result.Lives = book.All.Count;
        var checks = rounds.SelectMany(r => r.Faults.Select(f => new FaultCheck(f, r))).ToList();
        result.Checks.AddRange(checks);
        int RoundOf(long mono)
        {
            var index = -1;
            foreach (var r in rounds)
            {
                if (r.Start <= mono)
                {
                    index = r.Index;
                }
            }

            return index;
        }

        // Blame: the faults of the round on the hosts involved (a fencing case first), else every fault of the round.
        List<FaultCheck> Blame(int round, params string[] hosts)
        {
            var inRound = checks.Where(c => c.Round.Index == round).ToList();
            var onHosts = inRound.Where(c => hosts.Contains(c.Fault.HostName) || FaultKinds.IsGlobal(c.Fault.Plan.Kind)).ToList();
            return onHosts.Count > 0 ? onHosts : inRound;
        }

        // Overlaps: two lives of one singleton at once on the monotonic clock.
        foreach (var group in book.All.GroupBy(l => l.Singleton))
        {
            var lives = group.OrderBy(l => l.Start).ToList();
            for (var i = 0; i < lives.Count; i++)
            {
                for (var j = i + 1; j < lives.Count && lives[j].Start < (lives[i].End ?? end); j++)
                {
                    var a = lives[i];
                    var b = lives[j];
                    if (a.EndKind is "exit" or "gone" && a.HeldFlock && !b.FlockTaken)
                    {
                        // a's end is only known as "when its process was seen to end" (an upper bound), but a held the
                        // kernel lock, which nothing but its process's death frees without a stop, and b found it free: the
                        // kernel says a's process was dead before b started.
                        result.KernelCleared++;
                        continue;
                    }

                    var round = RoundOf(b.Start);
                    var blamed = Blame(round, a.Host, b.Host);
                    var fencing = blamed.Where(c => FaultKinds.IsFencingCase(c.Fault.Plan.Kind) && (c.Fault.HostName == a.Host || c.Fault.HostName == b.Host)).ToList();
                    var overlap = new Overlap(group.Key, a, b, b.Start, Math.Min(a.End ?? end, b.End ?? end), round, fencing.Count > 0, b.FlockTaken);
                    result.Overlaps.Add(overlap);
                    var targets = fencing.Count > 0 ? fencing : blamed;
                    if (targets.Count == 0)
                    {
                        result.Unattributed.Add($"overlap of {group.Key} outside any round: {Describe(overlap)}");
                    }

                    foreach (var c in targets)
                    {
                        if (overlap.Allowed)
                        {
                            c.OverlapsAllowed++;
                        }
                        else
                        {
                            c.OverlapsForbidden++;
                            c.Failures.Add("overlap: " + Describe(overlap));
                        }

                        if (overlap.Witnessed)
                        {
                            c.OverlapsWitnessed++;
                        }
                    }
                }
            }
        }

        // Stale writes: per singleton, in insert (= commit) order, an epoch lower than one already written.
        void Ordered(string table, List<DbRow> rows, List<StaleRow> into, bool fails)
        {
            foreach (var group in rows.GroupBy(r => r.Singleton))
            {
                long max = 0;
                foreach (var row in group.OrderBy(r => r.Id))
                {
                    if (row.Epoch < max)
                    {
                        var stale = new StaleRow(table, row, max, RoundOf(row.Mono));
                        into.Add(stale);
                        var blamed = Blame(stale.Round, row.Host);
                        if (blamed.Count == 0 && fails)
                        {
                            result.Unattributed.Add($"stale guarded write outside any round: {Describe(stale)}");
                        }

                        foreach (var c in blamed)
                        {
                            if (fails)
                            {
                                c.StaleGuarded++;
                                c.Failures.Add("stale guarded write committed: " + Describe(stale));
                            }
                            else
                            {
                                c.UnguardedInterleaved++;
                            }
                        }
                    }

                    max = Math.Max(max, row.Epoch);
                }
            }
        }

        Ordered("guarded", guarded, result.Stale, fails: true);
        Ordered("unguarded", unguarded, result.Interleaved, fails: false);

        // Unavailability and the bound: every singleton the fault took away runs again within it.
        var lease = settings.Lease.TotalSeconds;
        var baseline = ClockBaseline(book);
        var livesOf = book.All.GroupBy(l => l.Singleton).ToDictionary(g => g.Key, g => g.OrderBy(l => l.Start).ToList(), StringComparer.Ordinal);
        foreach (var c in checks)
        {
            var f = c.Fault;
            var kind = f.Plan.Kind;
            if (!f.Injected)
            {
                c.Failures.Add($"not injected: {f.Note}");
            }

            double? bound = kind switch
            {
                _ when FaultKinds.IsGlobal(kind) => Mono.Seconds(f.End - f.Start) + (2 * lease) + 3,
                FaultKind.ClockJump => null,
                _ => lease + 2,
            };
            if (bound is { } b && (FaultKinds.TakesAway(kind) || FaultKinds.IsGlobal(kind)))
            {
                foreach (var s in f.Affected)
                {
                    var next = livesOf.GetValueOrDefault(s)?.FirstOrDefault(l => l.Start > f.Start);
                    if (next is null)
                    {
                        c.Failures.Add($"lost: {s} never ran again after the fault");
                        continue;
                    }

                    var gap = Mono.Seconds(next.Start - f.Start);
                    c.Unavailability.Add(gap);
                    if (gap > b)
                    {
                        c.Failures.Add(string.Create(CultureInfo.InvariantCulture, $"late: {s} ran again {gap:0.00} s after the fault began (bound {b:0.00} s = {(FaultKinds.IsGlobal(kind) ? "fault duration + lease + lock-delay + 3 s" : "lease + 2 s")}), on {next.Node}"));
                    }
                }
            }

            if (c.Round.RecoveredAt is null)
            {
                c.Failures.Add(string.Create(CultureInfo.InvariantCulture, $"not exactly once within {2 * lease + 3:0.#} s (lease + lock-delay + 3 s) after the round's last fault ended: {c.Round.NotRecovered}"));
            }

            if (kind == FaultKind.ClockJump)
            {
                var observed = book.WallSamples
                    .Where(w => w.Host == f.HostName && w.Mono > f.Start + Mono.FromSeconds(1.2) && w.Mono < f.End)
                    .Select(w => (w.WallMs - (w.Mono / 1_000_000)) - baseline.GetValueOrDefault(w.Host))
                    .ToList();
                var expected = f.Detail * 1000L;
                var seen = observed.Any(d => Math.Abs(d - expected) < 2000);
                f.Note += string.Create(CultureInfo.InvariantCulture, $"{(f.Note.Length > 0 ? ";" : "")}observed={(observed.Count == 0 ? "none" : string.Join('/', observed.Select(d => (d / 1000.0).ToString("0.#", CultureInfo.InvariantCulture))))}");
                if (!seen)
                {
                    c.Failures.Add("clock jump not observed in the host's processes (no sample with the faked wall clock)");
                }
            }
        }

        return result;
    }

    /// <summary>Per host, the usual wall-clock minus monotonic-clock offset (the median), to see a faked jump against.</summary>
    private static Dictionary<string, long> ClockBaseline(LifeBook book) =>
        book.WallSamples.GroupBy(w => w.Host).ToDictionary(
            g => g.Key,
            g =>
            {
                var d = g.Select(w => w.WallMs - (w.Mono / 1_000_000)).Order().ToList();
                return d[d.Count / 2];
            },
            StringComparer.Ordinal);

    public static string Describe(Overlap o) => string.Create(CultureInfo.InvariantCulture,
        $"{o.Singleton}: {o.First.Node} (pid {o.First.Pid}, epoch {o.First.Epoch}, ended by {o.First.EndKind}) and {o.Second.Node} (pid {o.Second.Pid}, epoch {o.Second.Epoch}, kernel lock {(o.Witnessed ? "taken" : "free")}) both running for {Mono.Seconds(o.To - o.From) * 1000:0} ms");

    public static string Describe(StaleRow s) => string.Create(CultureInfo.InvariantCulture,
        $"{s.Table} row {s.Row.Id} of {s.Row.Singleton} by {s.Row.Node} (pid {s.Row.Pid}) with epoch {s.Row.Epoch} after epoch {s.HigherEpoch}");
}
