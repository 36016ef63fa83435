using System.Globalization;
using System.Text;

namespace HighlanderPG.FaultRun;

internal sealed record Overlap(string Singleton, Life First, Life Second, long From, long To, int Round, bool Allowed, bool Witnessed);

internal sealed record StaleRow(string Table, DbRow Row, long HigherEpoch, int Round);

/// <summary>
/// A step of the server's wall clock (a real clock jump steps the whole machine's): at a jump's start by its offset, at its
/// end back. <paramref name="Seconds"/> is the step's size. <paramref name="Lingers"/>: a backward step that starts a
/// jump (the clock behind until the jump's end), whose effect on the server's timeouts outlasts the jump
/// (<see cref="Checker.BackwardStepLinger"/>).
/// </summary>
internal sealed record ClockStep(long At, bool Forward, double Seconds, int FaultId, bool Lingers = false);

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
    public double? Recovery => (Round.RecoveredAt ?? SettledAt) is { } at ? Mono.Seconds(at - Round.LastFaultEnd) : null;

    /// <summary>The late bound without extension (null: the fault has none), in seconds.</summary>
    public double? LateBound { get; set; }

    /// <summary>The late bound's extension for steps of the server's clock, in seconds (0: none).</summary>
    public double LateExtension { get; set; }

    /// <summary>Why, e.g. " + 3.00 s lock-delay after a forward step of the server's clock (fault 12)".</summary>
    public string LateWhy { get; set; } = "";

    /// <summary>The round-settle bound's extension for steps of the server's clock in or near the round, in seconds.</summary>
    public double SettleExtension { get; set; }

    public string SettleWhy { get; set; } = "";

    /// <summary>Whether a take-over or the round's settling came after the normal bound but within the extended one.</summary>
    public bool NeededExtension { get; set; }

    /// <summary>When the round settled, found in the history, where the run's live wait gave up before the extended bound.</summary>
    public long? SettledAt { get; set; }
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

    /// <summary>The steps of the server's wall clock in the run.</summary>
    public List<ClockStep> Steps { get; } = [];

    /// <summary>Faults whose late bound was extended for a step of the server's wall clock.</summary>
    public int ExtendedBounds => Checks.Count(c => c.LateExtension > 0);

    /// <summary>Rounds whose settle bound was extended for a step of the server's wall clock.</summary>
    public int ExtendedRounds => Checks.Where(c => c.SettleExtension > 0).Select(c => c.Round.Index).Distinct().Count();

    /// <summary>Of those, the checks that passed only thanks to the extension.</summary>
    public int ExtensionNeeded => Checks.Count(c => c.NeededExtension && c.Passed);
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
    public static CheckResult Check(Settings settings, Cluster? cluster, List<RoundRecord> rounds, List<HistoryEvent> events, List<DbRow> guarded, List<DbRow> unguarded)
    {
        _ = cluster;
        var result = new CheckResult { GuardedRows = guarded.Count, UnguardedRows = unguarded.Count };
        var book = new LifeBook { KeepTicks = true };
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
        // What each fault took away, from the whole history: the run's live view at the fault's start may not have read
        // a child's start yet (its history is read every few hundred milliseconds).
        foreach (var f in rounds.SelectMany(r => r.Faults).Where(f => !FaultKinds.IsGlobal(f.Plan.Kind) && f.HostName is not null))
        {
            f.Affected = book.LedAt(f.Start, f.HostName!, f.Node);
        }

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
                    // Excused only by a fencing case that took this very singleton away (not by one that hit the host but
                    // took nothing, e.g. a follower's session ended).
                    var fencing = blamed.Where(c => FaultKinds.IsFencingCase(c.Fault.Plan.Kind) && c.Fault.Injected && (c.Fault.HostName == a.Host || c.Fault.HostName == b.Host)
                        && (c.Fault.Affected.Contains(group.Key) || StartedWhilePaused(c.Fault, a))).ToList();
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

        // Unavailability and the bound: every singleton the fault took away runs again within it. A step of the server's
        // wall clock near the fault extends it (docs/fault-run.md "The checker"): never the overlap or stale-write checks.
        var lease = settings.Lease.TotalSeconds;
        var baseline = ClockBaseline(book);
        var jumps = checks.Where(c => c.Fault.Plan.Kind == FaultKind.ClockJump).Select(c => (c.Fault.Start, c.Fault.End)).ToList();
        var livesOf = book.All.GroupBy(l => l.Singleton).ToDictionary(g => g.Key, g => g.OrderBy(l => l.Start).ToList(), StringComparer.Ordinal);
        var steps = ClockSteps(rounds, events);
        result.Steps.AddRange(steps);
        var singletons = Enumerable.Range(0, settings.Singletons).Select(i => string.Create(CultureInfo.InvariantCulture, $"s{i:000}")).ToList();
        var settleBound = (2 * lease) + 3;
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

            // The steps in the fault's window [start - lease, start + bound], and in its round's [round start - lease,
            // last fault end + lease + lock-delay + 3 s]; a backward step counts from further back (BackwardStepLinger).
            var lateSteps = bound is { } lb ? StepsIn(steps, f.Start, f.Start + Mono.FromSeconds(lb), lease) : [];
            var roundSteps = StepsIn(steps, c.Round.Start, c.Round.LastFaultEnd + Mono.FromSeconds(settleBound), lease);
            // A backward step delays only what waits for the server's idle timeouts (a holder cut off, frozen or starved);
            // a crash, a graceful stop or a killed backend frees the locks at once whatever the server's clock says.
            var (lateExtra, lateWhy) = Extension(lateSteps, lease, WaitsForServerTimeout(kind));
            var (settleExtra, settleWhy) = Extension(roundSteps, lease, backwardCounts: true);
            c.LateBound = bound;
            (c.LateExtension, c.LateWhy) = bound is null ? (0, "") : (lateExtra, lateWhy);
            (c.SettleExtension, c.SettleWhy) = (settleExtra, settleWhy);
            if (bound is { } b && (FaultKinds.TakesAway(kind) || FaultKinds.IsGlobal(kind)))
            {
                var extended = b + lateExtra;
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
                    if (gap > extended)
                    {
                        c.Failures.Add(string.Create(CultureInfo.InvariantCulture, $"late: {s} ran again {gap:0.00} s after the fault began (bound {extended:0.00} s = {(FaultKinds.IsGlobal(kind) ? "fault duration + lease + lock-delay + 3 s" : "lease + 2 s")}{lateWhy}), on {next.Node}"));
                    }
                    else if (gap > b)
                    {
                        c.NeededExtension = true;
                    }
                }
            }

            if (c.Round.RecoveredAt is null)
            {
                // The run waited the normal bound after the round's last fault and saw it unsettled. The history is the
                // record: look in it for the moment the round settled, up to the bound (extended for a step in the
                // round) and before the next round began. (The live view can lag the history: a reused pid's file.)
                var next = rounds.FirstOrDefault(r => r.Index == c.Round.Index + 1)?.Start ?? long.MaxValue;
                c.SettledAt = book.RecoveredAt(singletons, c.Round.LastFaultEnd, Math.Min(next, c.Round.LastFaultEnd + Mono.FromSeconds(settleBound + settleExtra)));
                var settled = c.SettledAt is not null;
                c.NeededExtension |= settled && settleExtra > 0 && c.SettledAt > c.Round.LastFaultEnd + Mono.FromSeconds(settleBound);

                if (!settled)
                {
                    c.Failures.Add(string.Create(CultureInfo.InvariantCulture, $"not exactly once within {settleBound + settleExtra:0.##} s (lease + lock-delay + 3 s{settleWhy}) after the round's last fault ended: {c.Round.NotRecovered}"));
                }
            }

            if (kind == FaultKind.ClockJump)
            {
                // Against the host's wall clock shortly before the jump (the median of its samples in the 30 s before,
                // outside every jump), not the whole run's: the machine's clock may also be set by others meanwhile (a
                // hypervisor's or NTP's correction after the VM was paused: seen once, a 3.4 s step and a slew, which put
                // every later jump's offset off by as much against a run-wide baseline).
                var before = book.WallSamples
                    .Where(w => w.Host == f.HostName && w.Mono < f.Start && w.Mono > f.Start - Mono.FromSeconds(30)
                        && !jumps.Any(j => w.Mono >= j.Start - Mono.FromSeconds(0.5) && w.Mono <= j.End + Mono.FromSeconds(1)))
                    .Select(w => w.WallMs - (w.Mono / 1_000_000))
                    .Order()
                    .ToList();
                var reference = before.Count > 0 ? before[before.Count / 2] : baseline.GetValueOrDefault(f.HostName!);
                var observed = book.WallSamples
                    .Where(w => w.Host == f.HostName && w.Mono > f.Start + Mono.FromSeconds(1.2) && w.Mono < f.End)
                    .Select(w => (w.WallMs - (w.Mono / 1_000_000)) - reference)
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

    /// <summary>
    /// The steps of the server's wall clock: the real clock jumps (their fault-start line says "offset=+-Ns;real"; a
    /// libfaketime jump moves one host's processes' clock, not the server's) that were injected. A start with offset +X
    /// is a forward step of X, its end a backward step of X; a start with -X a backward step, its end a forward one.
    /// </summary>
    internal static List<ClockStep> ClockSteps(List<RoundRecord> rounds, List<HistoryEvent> events)
    {
        var faults = rounds.SelectMany(r => r.Faults).GroupBy(f => f.Plan.Id).ToDictionary(g => g.Key, g => g.First());
        var ends = new Dictionary<int, long>();
        var starts = new List<(int Id, long At, int Offset)>();
        foreach (var e in events.Where(e => e.Kind is "fault-start" or "fault-end"))
        {
            var parts = e.Detail.Split(';');
            var id = parts.FirstOrDefault(p => p.StartsWith("id=", StringComparison.Ordinal)) is { } idPart
                && int.TryParse(idPart[3..], NumberStyles.Integer, CultureInfo.InvariantCulture, out var n) ? n : -1;
            if (id < 0 || !parts.Contains("kind=ClockJump", StringComparer.Ordinal))
            {
                continue;
            }

            if (e.Kind == "fault-end")
            {
                ends[id] = e.Mono;
            }
            else if (parts.Contains("real", StringComparer.Ordinal)
                && parts.FirstOrDefault(p => p.StartsWith("offset=", StringComparison.Ordinal)) is { } offset
                && int.TryParse(offset[7..].TrimEnd('s'), NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out var x) && x != 0)
            {
                starts.Add((id, e.Mono, x));
            }
        }

        var steps = new List<ClockStep>();
        foreach (var (id, at, x) in starts)
        {
            if (faults.TryGetValue(id, out var f) && !f.Injected)
            {
                continue;
            }

            steps.Add(new ClockStep(at, x > 0, Math.Abs(x), id, Lingers: x < 0));
            if (ends.TryGetValue(id, out var end) || (f is not null && (end = f.End) > 0))
            {
                steps.Add(new ClockStep(end, x < 0, Math.Abs(x), id));
            }
        }

        return [.. steps.OrderBy(s => s.At)];
    }

    /// <summary>
    /// Whether <paramref name="life"/> is a child of a host that <paramref name="fault"/> paused, started while it was paused:
    /// its start was under way as the pause began (its supervisor had the lock and had sent the token; the process that
    /// then started it forked after the nemesis listed the host's processes, so it escaped the SIGSTOP), and its supervisor,
    /// frozen, could not stop it at the lease. That is the fencing case the pause is, even though the child was not yet
    /// running, and so not counted as taken away, at the fault's start (seen once in a soak: a `highlander run` host paused
    /// 0.4 s before its child started; the child's guarded write was refused).
    /// </summary>
    private static bool StartedWhilePaused(FaultRecord fault, Life life) =>
        fault.Plan.Kind is FaultKind.Pause or FaultKind.PauseInTx && fault.HostName == life.Host && life.Start >= fault.Start && life.Start <= fault.End;

    /// <summary>Whether a fault's take-over waits for the server to end the holder's session by its idle timeout.</summary>
    private static bool WaitsForServerTimeout(FaultKind kind) =>
        kind is FaultKind.Pause or FaultKind.PauseInTx or FaultKind.Partition or FaultKind.Starve;

    /// <summary>
    /// How long after a backward step of the server's clock that puts it behind (a jump by -X, put right at its end) the
    /// server's timeouts can still come X late, at least: PostgreSQL keeps one interval timer per backend, and a disabled
    /// timeout neither cancels it nor clears what it is due for. A timer signal that comes while the clock is behind finds
    /// nothing due and re-arms the timer for the nearest active timeout, X too far; a timeout set later (even after the
    /// clock is right again), due after that one, does not re-arm it and fires with it. That nearest timeout can be any
    /// the backend had running: its 10 s idle-statistics flush (PostgreSQL 15 on), or the lease
    /// (<c>idle_session_timeout</c>, <c>idle_in_transaction_session_timeout</c>); so the longer of 10 s and the lease.
    /// The backward step that ends a +X jump does not linger: what is re-armed after it is re-armed on a right clock.
    /// Measured: docs/lease-protocol.md, "Steps of the server's wall clock".
    /// </summary>
    internal const double BackwardStepLinger = 10;

    /// <summary>
    /// The steps in [from - lease, to], and a lingering backward step (<see cref="ClockStep.Lingers"/>) in
    /// [from - lease - max(<see cref="BackwardStepLinger"/>, lease), to].
    /// </summary>
    private static List<ClockStep> StepsIn(List<ClockStep> steps, long from, long to, double lease) =>
        [.. steps.Where(s => s.At <= to && s.At >= from - Mono.FromSeconds(lease + (s.Lingers ? Math.Max(BackwardStepLinger, lease) : 0)))];

    /// <summary>
    /// + lease for each forward step (lock-delay: nodes that see it take no lock for the lease), + X for each backward
    /// step of X (the server's idle_session_timeout fires up to X later); with the words for the late message.
    /// </summary>
    private static (double Seconds, string Why) Extension(List<ClockStep> steps, double lease, bool backwardCounts)
    {
        var seconds = 0.0;
        var why = new StringBuilder();
        foreach (var s in steps.Where(s => s.Forward || backwardCounts))
        {
            var extra = s.Forward ? lease : s.Seconds;
            seconds += extra;
            why.Append(CultureInfo.InvariantCulture, $" + {extra:0.00} s ");
            why.Append(s.Forward ? "lock-delay after a forward step of the server's clock" : "backward step of the server's clock");
            why.Append(CultureInfo.InvariantCulture, $" (jump #{s.FaultId})");
        }

        return (seconds, why.ToString());
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

/// <summary>
/// Hidden mode <c>--check-only DIR [--report OUT]</c>: the checker over a recorded run, without a cluster. DIR is a run's
/// report directory (its report.json for the settings, rounds and recovery times the run measured live; its run/history
/// for everything else); the report goes to OUT (default DIR/recheck), never over the run's own. The database's rows are
/// not kept with a run: the stale-write failures the run found are carried over as they were (never re-judged).
/// </summary>
internal static class OfflineCheck
{
    public static int Run(string[] args)
    {
        string? dir = null, output = null;
        for (var i = 0; i < args.Length; i++)
        {
            switch (args[i])
            {
                case "--check-only" when i + 1 < args.Length: dir = args[++i]; break;
                case "--report" when i + 1 < args.Length: output = args[++i]; break;
                default:
                    Console.Error.WriteLine($"fault-run: unknown or incomplete argument {args[i]}");
                    Console.Error.WriteLine("usage: fault-run --check-only DIR [--report OUT]");
                    return 2;
            }
        }

        dir = Path.GetFullPath(dir!);
        output = Path.GetFullPath(output ?? Path.Combine(dir, "recheck"));
        using var doc = System.Text.Json.JsonDocument.Parse(File.ReadAllText(Path.Combine(dir, "report.json")));
        var json = doc.RootElement;
        var st = json.GetProperty("settings");
        var settings = new Settings
        {
            Seed = json.GetProperty("seed").GetInt32(),
            Nodes = st.GetProperty("Nodes").GetInt32(),
            Singletons = st.GetProperty("Singletons").GetInt32(),
            CliHosts = st.GetProperty("CliHosts").GetInt32(),
            CliSingletons = st.GetProperty("CliSingletons").GetInt32(),
            Lease = TimeSpan.FromSeconds(st.GetProperty("leaseSeconds").GetDouble()),
            Smoke = st.GetProperty("Smoke").GetBoolean(),
        };
        var events = new HistoryTail(RunEnvironment.HistoryDirectory(Path.Combine(dir, "run"))).ReadNew().OrderBy(e => e.Mono).ToList();

        // The lives, to find what each fault took away (the run took it from its live view at the fault's start).
        var book = new LifeBook();
        foreach (var e in events)
        {
            book.Feed(e);
        }

        var recorded = json.GetProperty("faults").EnumerateArray().ToDictionary(f => f.GetProperty("id").GetInt32());
        var begins = new Dictionary<int, HistoryEvent>();
        var finishes = new Dictionary<int, HistoryEvent>();
        foreach (var e in events.Where(e => e.Kind is "fault-start" or "fault-end"))
        {
            var id = int.Parse(Field(e.Detail, "id") ?? "-1", CultureInfo.InvariantCulture);
            (e.Kind == "fault-start" ? begins : finishes)[id] = e;
        }

        var singletons = Enumerable.Range(0, settings.Singletons).Select(i => string.Create(CultureInfo.InvariantCulture, $"s{i:000}")).ToList();
        var rounds = new SortedDictionary<int, RoundRecord>();
        var mismatched = 0;
        var carried = new Dictionary<int, List<string>>();
        foreach (var (id, begin) in begins.OrderBy(b => b.Key))
        {
            if (!recorded.TryGetValue(id, out var r) || !finishes.TryGetValue(id, out var finish))
            {
                continue;
            }

            var kind = Enum.Parse<FaultKind>(Field(begin.Detail, "kind")!);
            var hostName = Field(begin.Detail, "host")!;
            var note = string.Join(';', finish.Detail.Split(';').Skip(3)).TrimEnd(';');
            note = note == "-" ? "" : note;
            var offset = Field(begin.Detail, "offset") is { } o ? int.Parse(o.TrimEnd('s'), NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture) : 0;
            var node = Field(begin.Detail, "node");
            var round = r.GetProperty("round").GetInt32();
            var host = hostName.StartsWith('h') && int.TryParse(hostName[1..], NumberStyles.None, CultureInfo.InvariantCulture, out var h) ? h : -1;
            var record = new FaultRecord(new FaultPlan(id, round, kind, host, 0, 0, offset))
            {
                Start = begin.Mono,
                End = finish.Mono,
                HostName = hostName,
                Note = note,
                Detail = offset,
                Injected = !(note == "clock_settime refused" || note == "terminated=0" || note.StartsWith("failed:", StringComparison.Ordinal)),
                Node = node,
                Affected = FaultKinds.IsGlobal(kind) ? [.. singletons] : book.LedAt(begin.Mono, hostName, node),
            };
            if (record.Affected.Count != r.GetProperty("affected").GetInt32())
            {
                mismatched++;
            }

            var stale = r.GetProperty("failures").EnumerateArray().Select(x => x.GetString()!).Where(x => x.StartsWith("stale guarded write", StringComparison.Ordinal)).ToList();
            if (stale.Count > 0)
            {
                carried[id] = stale;
            }

            if (!rounds.TryGetValue(round, out var rr))
            {
                rounds[round] = rr = new RoundRecord(round) { Start = long.MaxValue };
            }

            rr.Faults.Add(record);
            rr.Start = Math.Min(rr.Start, record.Start);
            rr.LastFaultEnd = Math.Max(rr.LastFaultEnd, record.End);
            if (r.GetProperty("recovery").ValueKind == System.Text.Json.JsonValueKind.Number)
            {
                rr.RecoveredAt = 0;
                rr.NotRecovered = r.GetProperty("recovery").GetDouble().ToString("R", CultureInfo.InvariantCulture);
            }
            else if (r.GetProperty("failures").EnumerateArray().Select(x => x.GetString()!).FirstOrDefault(x => x.StartsWith("not exactly once", StringComparison.Ordinal)) is { } why)
            {
                rr.NotRecovered = why[(why.IndexOf("ended: ", StringComparison.Ordinal) + 7)..];
            }
        }

        foreach (var rr in rounds.Values.Where(r => r.RecoveredAt is not null))
        {
            // The recovery time the run measured live, after the round's last fault.
            rr.RecoveredAt = rr.LastFaultEnd + Mono.FromSeconds(double.Parse(rr.NotRecovered, CultureInfo.InvariantCulture));
            rr.NotRecovered = "";
        }

        var result = Checker.Check(settings, null, [.. rounds.Values], events, [], []);
        foreach (var c in result.Checks)
        {
            if (carried.TryGetValue(c.Fault.Plan.Id, out var stale))
            {
                c.StaleGuarded += stale.Count;
                c.Failures.AddRange(stale);
            }
        }

        result.GuardedRows = json.GetProperty("GuardedRows").GetInt32();
        result.UnguardedRows = json.GetProperty("UnguardedRows").GetInt32();
        var clockJumps = json.GetProperty("clockJumps").GetString() ?? "";
        var serverOurs = !json.GetProperty("kinds").EnumerateArray().Any(k => (k.GetProperty("Status").GetString() ?? "").Contains("not ours", StringComparison.Ordinal));
        var facts = new Report.RunFacts(
            clockJumps is "real (clock_settime)" or "libfaketime" ? null : clockJumps, clockJumps == "real (clock_settime)", serverOurs,
            json.GetProperty("server").GetString() ?? "", json.GetProperty("partitions").GetString() ?? "",
            json.GetProperty("commit").GetString() ?? "", json.GetProperty("machine").GetString() ?? "", json.GetProperty("loadAverage").GetString() ?? "",
            string.Create(CultureInfo.InvariantCulture,
                $"re-checked offline ({DateTimeOffset.UtcNow:yyyy-MM-dd HH:mm} UTC, `fault-run --check-only`, checker at commit {Report.CurrentCommit()}) from the run's recorded history; the run's own report said {json.GetProperty("passed").GetInt32()} passed, {json.GetProperty("failed").GetInt32()} failed. The database's rows are not kept with a run: stale guarded writes are the run's own findings carried over ({carried.Values.Sum(v => v.Count)}), unguarded interleaved writes are not re-counted (the run counted {json.GetProperty("unguardedInterleaved").GetInt32()})"));
        var aborted = json.GetProperty("aborted").ValueKind == System.Text.Json.JsonValueKind.String ? json.GetProperty("aborted").GetString() : null;
        var report = Report.Write(output, settings, facts, result, json.GetProperty("date").GetDateTimeOffset(), TimeSpan.FromSeconds(json.GetProperty("tookSeconds").GetDouble()), aborted);
        Console.WriteLine(report.Table);
        if (mismatched > 0)
        {
            Console.WriteLine($"note: for {mismatched} faults the singletons taken away, rebuilt from the history, are not as many as the run saw live");
        }

        Console.WriteLine($"{result.Passed} passed, {result.Failed} failed; {result.Steps.Count} steps of the server's wall clock: late bound extended for {result.ExtendedBounds} faults, settle bound for {result.ExtendedRounds} rounds; {result.ExtensionNeeded} checks passed only within an extended bound");
        Console.WriteLine($"report: {Path.Combine(output, "report.md")}");
        return result.Failed > 0 || result.Passed == 0 ? 1 : 0;
    }

    private static string? Field(string detail, string name) =>
        detail.Split(';').FirstOrDefault(p => p.StartsWith(name + "=", StringComparison.Ordinal)) is { } p ? p[(name.Length + 1)..] : null;
}
