using System.Diagnostics;
using System.Globalization;
using HighlanderPG.Benchmarks.Infrastructure;
using HighlanderPG.Benchmarks.Measurement;
using Npgsql;

namespace HighlanderPG.Benchmarks.Cases;

/// <summary>
/// The scale suite (<c>--suite scale</c>): HighlanderPG nodes as separate processes (<c>node --kind scale</c>), each
/// registering the same N singletons <c>s0000</c>...; take-over times from the nodes' own START lines (monotonic
/// clock), never from polling the database. See bench/README.md.
/// </summary>
internal sealed class ScaleCases(BenchContext context, StatementLog? statementLog, int? postmasterPid, ScaleResults results)
{
    private static readonly TimeSpan ReadyTimeout = TimeSpan.FromSeconds(120);
    private static readonly TimeSpan RunningTimeout = TimeSpan.FromSeconds(300);
    private static readonly HighlanderOptions Defaults = new();

    private BenchmarkSettings Settings => context.Settings;

    private string Prefix => "b" + context.RunId[..4];

    /// <summary>Steady state: a leader of N singletons and a follower of the same N, idle, over a window.</summary>
    public async Task SteadyAsync(int singletons, CancellationToken ct)
    {
        context.Progress($"steady-state, {singletons} singleton(s): starting a leader, then a follower");
        await using var cluster = new ScaleCluster(context, $"bench-{context.RunId}-steady{singletons}", singletons, $"{Prefix}-s{singletons}-");
        var leader = cluster.StartNode();
        await leader.WaitReadyAsync(ReadyTimeout, ct);
        await cluster.WaitAllRunningAsync(RunningTimeout, ct);
        var follower = cluster.StartNode();
        await follower.WaitReadyAsync(ReadyTimeout, ct);
        if (!await WaitForSessionAsync(HolderWait(follower.NodeId), TimeSpan.FromSeconds(30), ct))
        {
            results.Notes.Add($"steady {singletons}: the follower's wait session was not seen within 30 s; measured anyway.");
        }

        if (statementLog is not null)
        {
            await statementLog.SetLoggingAsync(true, ct);
        }

        // Long enough for every session to have read the new log setting (the wait session's slice ends) and for the
        // start-up's statements to be over.
        context.Progress($"steady-state, {singletons}: settling {Settings.Settle.TotalSeconds:0} s, then measuring {Settings.IdleWindow.TotalSeconds:0} s of idle");
        await Task.Delay(Settings.Settle, ct);
        try
        {
            List<ScaleNode> nodes = [leader, follower];
            var names = nodes.SelectMany(n => new[] { Holder(n.NodeId), HolderWait(n.NodeId) }).ToArray();
            var sessionsBefore = await SessionsAsync(names, ct);
            var nodeCpu = nodes.Select(n => ProcStat.CpuMilliseconds(n.Pid) ?? 0).ToArray();
            // Backends' CPU only when the server runs on this machine (its pids are ours to read).
            var backendCpu = postmasterPid is null ? [] : sessionsBefore.ToDictionary(s => s.Pid, s => ProcStat.CpuMilliseconds(s.Pid));
            var startMarker = statementLog is null ? null : await statementLog.MarkAsync(ct);
            var t0 = Stopwatch.GetTimestamp();
            var maxSessions = new Dictionary<string, int>(StringComparer.Ordinal);
            Count(sessionsBefore);
            var until = t0 + (long)(Settings.IdleWindow.TotalSeconds * Stopwatch.Frequency);
            while (Stopwatch.GetTimestamp() < until)
            {
                await Task.Delay(TimeSpan.FromSeconds(1), ct);
                Count(await SessionsAsync(names, ct));
            }

            var endMarker = statementLog is null ? null : await statementLog.MarkAsync(ct);
            var t1 = Stopwatch.GetTimestamp();
            var seconds = (t1 - t0) / (double)Stopwatch.Frequency;
            var sessionsAfter = await SessionsAsync(names, ct);
            Count(sessionsAfter);
            var read = statementLog is null ? default : await statementLog.ReadAsync(startMarker!, endMarker!, ct);
            var counts = read.Counts;
            for (var i = 0; i < nodes.Count; i++)
            {
                var node = nodes[i];
                var lockApp = Holder(node.NodeId);
                var waitApp = HolderWait(node.NodeId);
                double? backends = postmasterPid is null ? null : 0;
                foreach (var session in sessionsAfter.Where(s => s.Application == lockApp || s.Application == waitApp))
                {
                    backends = backendCpu.TryGetValue(session.Pid, out var before) && before is { } b && ProcStat.CpuMilliseconds(session.Pid) is { } a
                        ? backends + (a - b)
                        : null; // a session that was not there at the start: its CPU cannot be split
                }

                var lockCounts = counts?.GetValueOrDefault(lockApp);
                var waitCounts = counts?.GetValueOrDefault(waitApp);
                results.Steady.Add(new SteadyNode(
                    singletons, node == leader ? "leading" : "following", node.NodeId, node.RunningCount,
                    maxSessions.GetValueOrDefault(lockApp) + maxSessions.GetValueOrDefault(waitApp), maxSessions.GetValueOrDefault(lockApp), maxSessions.GetValueOrDefault(waitApp),
                    counts is null ? null : (lockCounts!.Value.Statements + waitCounts!.Value.Statements) / seconds,
                    lockCounts?.Statements / seconds, waitCounts?.Statements / seconds,
                    counts is null ? null : (lockCounts!.Value.Errors + waitCounts!.Value.Errors) / seconds,
                    ((ProcStat.CpuMilliseconds(node.Pid) ?? 0) - nodeCpu[i]) / (seconds * 1000) * 100,
                    backends is { } ms ? ms / (seconds * 1000) * 100 : null,
                    ProcStat.RssMiB(node.Pid), seconds)
                {
                    Statements = new[] { ("lock", lockApp), ("wait", waitApp) }
                        .SelectMany(p => read.Texts?.GetValueOrDefault(p.Item2)?.Select(t => ($"{p.Item1}: {t.Key}", t.Value)) ?? [])
                        .OrderByDescending(t => t.Value)
                        .ToDictionary(t => t.Item1, t => t.Value, StringComparer.Ordinal),
                });
                var row = results.Steady[^1];
                context.Progress(string.Create(CultureInfo.InvariantCulture,
                    $"steady {singletons} {row.Role}: {row.Sessions} session(s), {Rate(row.StatementsPerSecond)} statements/s ({Rate(row.LockStatementsPerSecond)} lock, {Rate(row.WaitStatementsPerSecond)} wait), {Rate(row.ErrorsPerSecond)} errors/s, node CPU {row.NodeCpuPercent:0.00} %, backends {Rate(row.BackendCpuPercent)} %, RSS {row.RssMiB:0} MiB"));
            }

            void Count(IEnumerable<Session> sessions)
            {
                foreach (var group in sessions.GroupBy(s => s.Application))
                {
                    maxSessions[group.Key] = Math.Max(maxSessions.GetValueOrDefault(group.Key), group.Count());
                }
            }
        }
        finally
        {
            if (statementLog is not null)
            {
                await statementLog.SetLoggingAsync(false, CancellationToken.None);
            }
        }
    }

    /// <summary>The baseline: two nodes, one singleton; its leader SIGKILLed or SIGTERMed, a fresh node replacing it.</summary>
    public async Task SingleAsync(CancellationToken ct)
    {
        context.Progress($"single-singleton baseline: 2 nodes x 1 singleton, {Settings.SingleIterations} SIGKILL and {Settings.SingleIterations} SIGTERM of its leader");
        await using var cluster = new ScaleCluster(context, $"bench-{context.RunId}-single", 1, $"{Prefix}-one-");
        await StartAsync(cluster, 2, ct);
        await FailoversAsync(cluster, Settings.SingleIterations, results.SingleFailovers, "single", ct);
    }

    /// <summary>N nodes x M singletons started together, then fail-overs of the node leading the most.</summary>
    public async Task ClusterAsync(CancellationToken ct)
    {
        var (nodes, singletons) = (Settings.ScaleNodes, Settings.ScaleSingletons);
        context.Progress($"{nodes} nodes x {singletons} singletons, started together");
        await using var cluster = new ScaleCluster(context, $"bench-{context.RunId}-scale", singletons, $"{Prefix}-n");
        var serverCpuBefore = postmasterPid is { } pm ? ProcStat.ServerCpuMilliseconds(pm) : null;
        var t0 = Stopwatch.GetTimestamp();
        var started = await StartAsync(cluster, nodes, ct);
        var allReady = started.Max(n => n.Ready.Result);
        var last = await cluster.WaitAllRunningAsync(RunningTimeout, ct);
        var serverCpuAfter = postmasterPid is { } pm2 ? ProcStat.ServerCpuMilliseconds(pm2) : null;
        var nodesCpu = started.Sum(n => ProcStat.CpuMilliseconds(n.Pid) ?? 0);
        await Task.Delay(TimeSpan.FromSeconds(2), ct);
        var spread = started.Select(n => new NodeCount(n.NodeId, n.RunningCount)).ToList();
        var first = started.SelectMany(n => n.Running().Values).DefaultIfEmpty(last).Min();
        results.StartTogether = new StartTogether(
            nodes, singletons, Sample.ToMilliseconds(started.Min(n => n.Ready.Result) - t0), Sample.ToMilliseconds(allReady - t0),
            Sample.ToMilliseconds(first - t0), Sample.ToMilliseconds(last - t0),
            serverCpuAfter - serverCpuBefore, nodesCpu, spread);
        context.Progress(string.Create(CultureInfo.InvariantCulture,
            $"started together: nodes ready after {Format.Milliseconds(results.StartTogether.FirstReadyMs)} (first) to {Format.Milliseconds(results.StartTogether.AllReadyMs)} (all); singletons running after {Format.Milliseconds(results.StartTogether.FirstRunningMs)} (first) to {Format.Milliseconds(results.StartTogether.AllRunningMs)} (all {singletons}); " +
            $"server CPU {Format.Milliseconds(results.StartTogether.ServerCpuMs ?? double.NaN)}; spread {string.Join(", ", spread.Select(s => $"{s.NodeId}={s.Running}"))}"));

        await FailoversAsync(cluster, Settings.ScaleRepetitions, results.Failovers, $"{singletons}", ct);
    }

    private async Task<List<ScaleNode>> StartAsync(ScaleCluster cluster, int count, CancellationToken ct)
    {
        var nodes = Enumerable.Range(0, count).Select(_ => cluster.StartNode()).ToList();
        foreach (var node in nodes)
        {
            await node.WaitReadyAsync(ReadyTimeout, ct);
        }

        return nodes;
    }

    /// <summary>Alternately SIGKILL and SIGTERM the live node leading the most; a fresh node replaces it each time.</summary>
    private async Task FailoversAsync(ScaleCluster cluster, int repetitions, List<Failover> into, string label, CancellationToken ct)
    {
        for (var rep = 1; rep <= repetitions; rep++)
        {
            foreach (var fault in rep % 2 == 1 ? new[] { "kill", "term" } : ["term", "kill"])
            {
                await cluster.WaitAllRunningAsync(RunningTimeout, ct);
                var missing = await WaitForSessionsAsync([.. cluster.Live.Where(n => n.RunningCount == 0).Select(n => HolderWait(n.NodeId))], TimeSpan.FromSeconds(30), ct);
                if (missing.Count > 0)
                {
                    results.Notes.Add($"{label} {fault} {rep}: no wait session seen within 30 s for {string.Join(", ", missing)}; the fault came anyway.");
                }

                // Let the new node settle into following, then land the fault at a random phase of the heartbeats.
                await Task.Delay(Settings.FaultSettle + context.Dwell(Defaults.HeartbeatInterval), ct);
                var live = cluster.Live;
                var victim = live.MaxBy(n => n.RunningCount)!;
                var names = victim.Running().Keys.ToList();
                var leaders = live.Count(n => n.RunningCount > 0);
                victim.Faulted = true;
                var fault_ = Stopwatch.GetTimestamp();
                if (fault == "kill")
                {
                    victim.Process.Kill();
                }
                else
                {
                    victim.Process.Terminate();
                }

                var takeOvers = await cluster.WaitTakenOverAsync(victim, names, fault_, Settings.Cap, ct);
                await victim.Process.WaitExitAsync(TimeSpan.FromSeconds(60));
                var times = takeOvers.Values.OfType<double>().Order().ToList();
                var failover = new Failover(fault, rep, victim.NodeId, names.Count, leaders, times, takeOvers.Count - times.Count,
                    Sample.ToMilliseconds(victim.Process.ExitedAt - fault_),
                    victim.LastStop > fault_ ? Sample.ToMilliseconds(victim.LastStop - fault_) : null);
                into.Add(failover);
                context.Progress(string.Create(CultureInfo.InvariantCulture,
                    $"{label} {fault} {rep}/{repetitions}: {victim.NodeId} ran {names.Count} (one of {leaders} leading node(s)); all elsewhere: first {Ms(failover.First)}, p50 {Ms(failover.P50)}, last {Ms(failover.Last)}{(failover.Missing > 0 ? $", {failover.Missing} NOT within the cap" : "")}; {(failover.VictimLastStopMs is { } stopped ? $"its last child returned after {Ms(stopped)}, " : "")}the victim exited after {Ms(failover.VictimExitMs)}"));

                var replacement = cluster.StartNode();
                await replacement.WaitReadyAsync(ReadyTimeout, ct);
            }
        }
    }

    private static string Ms(double? milliseconds) => milliseconds is { } m ? Format.Milliseconds(m) : "–";

    private static string Rate(double? rate) => rate is { } r ? r.ToString("0.00", CultureInfo.InvariantCulture) : "n/a";

    private static string Holder(string nodeId) => "highlander/" + nodeId;

    private static string HolderWait(string nodeId) => "highlander-wait/" + nodeId;

    private sealed record Session(string Application, int Pid);

    private async Task<List<Session>> SessionsAsync(string[] applications, CancellationToken ct)
    {
        await using var connection = await context.OpenDedicatedAsync("bench-scale", ct);
        await using var cmd = new NpgsqlCommand("SELECT application_name, pid FROM pg_catalog.pg_stat_activity WHERE application_name = ANY($1)", connection);
        cmd.Parameters.Add(new NpgsqlParameter<string[]> { TypedValue = applications });
        await using var reader = await cmd.ExecuteReaderAsync(ct);
        var sessions = new List<Session>();
        while (await reader.ReadAsync(ct))
        {
            sessions.Add(new Session(reader.GetString(0), reader.GetInt32(1)));
        }

        return sessions;
    }

    private async Task<bool> WaitForSessionAsync(string application, TimeSpan timeout, CancellationToken ct) =>
        (await WaitForSessionsAsync([application], timeout, ct)).Count == 0;

    /// <summary>Waits until every one of <paramref name="applications"/> has a session; returns those that still have none at the timeout.</summary>
    private async Task<IReadOnlyList<string>> WaitForSessionsAsync(string[] applications, TimeSpan timeout, CancellationToken ct)
    {
        var until = Stopwatch.GetTimestamp() + (long)(timeout.TotalSeconds * Stopwatch.Frequency);
        while (true)
        {
            var seen = (await SessionsAsync(applications, ct)).Select(s => s.Application).ToHashSet(StringComparer.Ordinal);
            var missing = applications.Where(a => !seen.Contains(a)).ToList();
            if (missing.Count == 0 || Stopwatch.GetTimestamp() >= until)
            {
                return missing;
            }

            await Task.Delay(50, ct);
        }
    }
}
