using System.Globalization;

namespace HighlanderPG.FaultRun;

internal enum FaultKind
{
    Stop,
    Kill,
    Pause,
    PauseInTx,
    Partition,
    Terminate,
    ServerRestart,
    DatabaseDown,
    ClockJump,
    Starve,
}

internal static class FaultKinds
{
    public static readonly FaultKind[] All = Enum.GetValues<FaultKind>();

    /// <summary>The faults the README "Safety" section says need fencing: no timeout covers them, so an overlap may happen.</summary>
    public static bool IsFencingCase(FaultKind kind) => kind is FaultKind.Pause or FaultKind.PauseInTx or FaultKind.Terminate;

    public static bool IsGlobal(FaultKind kind) => kind is FaultKind.ServerRestart or FaultKind.DatabaseDown;

    public static bool LibraryOnly(FaultKind kind) => kind is FaultKind.Starve or FaultKind.PauseInTx or FaultKind.ClockJump;

    /// <summary>Takes the host's singletons away (they must run elsewhere within the bound).</summary>
    public static bool TakesAway(FaultKind kind) => kind is not FaultKind.ClockJump && !IsGlobal(kind);

    public static string Name(FaultKind kind) => kind switch
    {
        FaultKind.Stop => "graceful stop (SIGTERM)",
        FaultKind.Kill => "SIGKILL",
        FaultKind.Pause => "SIGSTOP past the lease",
        FaultKind.PauseInTx => "SIGSTOP inside a guarded tx",
        FaultKind.Partition => "partition",
        FaultKind.Terminate => "pg_terminate_backend",
        FaultKind.ServerRestart => "server restart",
        FaultKind.DatabaseDown => "database down",
        FaultKind.ClockJump => "wall-clock jump",
        FaultKind.Starve => "thread-pool starvation",
        _ => kind.ToString(),
    };
}

/// <summary>One planned fault: drawn from the seed alone, so the same seed gives the same schedule.</summary>
internal sealed record FaultPlan(int Id, int Round, FaultKind Kind, int Host, int OffsetMs, int HoldMs, int Detail);

/// <summary>One fault as it happened.</summary>
internal sealed class FaultRecord(FaultPlan plan)
{
    /// <summary>The plan; a pause meant for a guarded transaction that found none is recorded as the plain pause it was.</summary>
    public FaultPlan Plan { get; set; } = plan;
    public long Start { get; set; }
    public long End { get; set; }
    public string Note { get; set; } = "";
    public bool Injected { get; set; } = true;

    /// <summary>For a clock jump: the step actually made, in seconds.</summary>
    public int Detail { get; set; }
    public List<string> Affected { get; set; } = [];
    public string? HostName { get; set; }

    /// <summary>The one node the fault was aimed at (pg_terminate_backend of a `highlander run` session), else null.</summary>
    public string? Node { get; set; }
}

/// <summary>One round: its faults start together (a few ms apart), then the run waits until the cluster has recovered.</summary>
internal sealed class RoundRecord(int index)
{
    public int Index { get; } = index;
    public long Start { get; set; }
    public long LastFaultEnd { get; set; }
    public long? RecoveredAt { get; set; }
    public string NotRecovered { get; set; } = "";
    public List<FaultRecord> Faults { get; } = [];
}

/// <summary>The seeded schedule: rounds of one to three faults on distinct hosts, or one fault of the whole server.</summary>
internal sealed class Schedule(Settings settings, bool clockAvailable, bool serverControl)
{
    private readonly Random _random = new(settings.Seed);
    private readonly Queue<FaultKind> _firsts = new();
    private int _round;
    private int _id;
    private bool _primed;

    private int LibraryHosts => settings.Nodes - settings.CliHosts;

    private bool Available(FaultKind k) => (k != FaultKind.ClockJump || clockAvailable) && (!FaultKinds.IsGlobal(k) || serverControl) && (settings.Kinds is null || settings.Kinds.Contains(k));

    public List<FaultPlan> NextRound()
    {
        if (!_primed)
        {
            _primed = true;
            if (settings.Smoke)
            {
                // Every kind once, alone, in a seeded order.
                foreach (var k in FaultKinds.All.Where(Available).OrderBy(_ => _random.Next()))
                {
                    _firsts.Enqueue(k);
                }
            }
        }

        var round = _round++;
        if (_firsts.TryDequeue(out var first))
        {
            return [Plan(round, first, PickHost(first, []), 0)];
        }

        if (serverControl && _random.Next(100) < 6 && Available(FaultKind.ServerRestart) && Available(FaultKind.DatabaseDown))
        {
            var kind = _random.Next(2) == 0 ? FaultKind.ServerRestart : FaultKind.DatabaseDown;
            return [Plan(round, kind, -1, 0)];
        }

        // Up to four faults at once (the soak's pace comes from overlapping them), on distinct hosts: two to four with
        // four hosts or more.
        var most = Math.Min(4, settings.Nodes - 1);
        var count = most >= 3 ? 2 + _random.Next(most - 1) : 1 + _random.Next(most);
        var plans = new List<FaultPlan>();
        var used = new HashSet<int>();
        for (var i = 0; i < count; i++)
        {
            var kinds = FaultKinds.All.Where(k => !FaultKinds.IsGlobal(k) && Available(k)).ToArray();
            var kind = kinds[_random.Next(kinds.Length)];
            // At least one library host keeps running normally, so every singleton has somewhere to go.
            var takenLibrary = plans.Count(p => FaultKinds.TakesAway(p.Kind) && p.Host < LibraryHosts);
            var host = PickHost(kind, used, allowLibrary: !FaultKinds.TakesAway(kind) || takenLibrary < LibraryHosts - 1);
            if (host < 0)
            {
                continue;
            }

            used.Add(host);
            plans.Add(Plan(round, kind, host, i == 0 ? 0 : _random.Next(0, 400)));
        }

        return plans.Count > 0 ? plans : [Plan(round, FaultKind.Kill, PickHost(FaultKind.Kill, []), 0)];
    }

    private int PickHost(FaultKind kind, HashSet<int> used, bool allowLibrary = true)
    {
        if (FaultKinds.IsGlobal(kind))
        {
            return -1;
        }

        var candidates = Enumerable.Range(0, settings.Nodes)
            .Where(h => !used.Contains(h))
            .Where(h => kind != FaultKind.ClockJump || h == 0)
            .Where(h => h < LibraryHosts ? allowLibrary : !FaultKinds.LibraryOnly(kind))
            .ToArray();
        return candidates.Length == 0 ? -1 : candidates[_random.Next(candidates.Length)];
    }

    private FaultPlan Plan(int round, FaultKind kind, int host, int offset)
    {
        var lease = (int)settings.Lease.TotalMilliseconds;
        var (hold, detail) = kind switch
        {
            FaultKind.Stop or FaultKind.Kill => (_random.Next(200, 800), 0),
            // Past the lease, long enough that the take-over must come while the holder is still frozen or cut off.
            FaultKind.Pause or FaultKind.PauseInTx or FaultKind.Partition or FaultKind.Starve => (lease + 2500 + _random.Next(0, 700), 0),
            FaultKind.DatabaseDown => (_random.Next(1000, 4000), 0),
            FaultKind.ClockJump => (_random.Next(2500, 4000), (_random.Next(2) == 0 ? -1 : 1) * _random.Next(60, 7200)),
            _ => (0, 0),
        };
        return new FaultPlan(_id++, round, kind, host, offset, hold, detail);
    }
}

/// <summary>Injects planned faults into the cluster and records each one's start and end in the history.</summary>
internal sealed class Nemesis(Cluster cluster, Func<LifeBook> book, Settings settings)
{
    private readonly System.Collections.Concurrent.ConcurrentDictionary<(int Round, string Host), int> _pausedInTx = new();

    private readonly Lock _retargetGate = new();
    private readonly Dictionary<int, HashSet<int>> _retargeted = []; // round -> hosts faults of it were moved to

    /// <summary>
    /// The planned host, or, when it runs no child at the moment of the fault, another host that does: a fault that takes
    /// nothing away checks nothing (an audit saw a CI smoke's only SIGKILL and only pause "pass" having taken away no
    /// singleton, on a `highlander run` host that led none). The other host is one no other fault of the round targets,
    /// a library host only for the kinds that need one, and never the round's last untouched library host (as planned:
    /// the singletons must have somewhere to go). The schedule stays seeded; where a fault lands then depends on who
    /// leads, as it would for an operator.
    /// </summary>
    private Host Retarget(FaultPlan plan, Host planned, IReadOnlyCollection<int> otherHosts)
    {
        var running = book().Open.Select(l => l.Host).ToHashSet(StringComparer.Ordinal);
        if (running.Contains(planned.Name))
        {
            return planned;
        }

        lock (_retargetGate)
        {
            if (!_retargeted.TryGetValue(plan.Round, out var moved))
            {
                _retargeted[plan.Round] = moved = [];
            }

            var libraryHosts = cluster.Hosts.Count(h => h.Kind == HostKind.Library);
            var libraryTaken = otherHosts.Concat(moved).Distinct().Count(i => cluster.Hosts[i].Kind == HostKind.Library);
            var chosen = cluster.Hosts
                .Where(h => h.Index != planned.Index && !otherHosts.Contains(h.Index) && !moved.Contains(h.Index) && running.Contains(h.Name)
                    && !_pausedInTx.ContainsKey((plan.Round, h.Name)))
                .Where(h => h.Kind == HostKind.Library ? libraryTaken + 1 < libraryHosts : !FaultKinds.LibraryOnly(plan.Kind))
                .OrderBy(h => h.Index)
                .FirstOrDefault();
            if (chosen is null)
            {
                return planned;
            }

            moved.Add(chosen.Index);
            return chosen;
        }
    }

    public async Task<FaultRecord> InjectAsync(FaultPlan plan, IReadOnlyCollection<int> otherHosts, CancellationToken cancel)
    {
        var record = new FaultRecord(plan);
        await Task.Delay(plan.OffsetMs, cancel);
        var host = plan.Host >= 0 ? cluster.Hosts[plan.Host] : null;
        if (host is not null && plan.Kind is not (FaultKind.PauseInTx or FaultKind.ClockJump))
        {
            host = Retarget(plan, host, otherHosts);
        }

        if (plan.Kind == FaultKind.PauseInTx)
        {
            // Land the pause inside a guarded transaction: wait (up to 6 s) for one to be announced, on the planned host
            // or, if it leads nothing, another library host that no other fault of the round targets.
            HashSet<int> movedHere;
            lock (_retargetGate)
            {
                movedHere = _retargeted.TryGetValue(plan.Round, out var moved) ? [.. moved] : [];
            }

            // Not a host another fault of the round was planned on or moved to.
            var candidates = cluster.Hosts.Where(h => h.Kind == HostKind.Library && (h.Index == plan.Host || !otherHosts.Contains(h.Index)) && !movedHere.Contains(h.Index)).ToList();
            foreach (var c in candidates)
            {
                book().ClearTransactions(c.Name);
            }

            var until = Mono.Now() + Mono.FromSeconds(6);
            Host? inTx = null;
            // Two such faults of one round never take the same host.
            while ((inTx = candidates.OrderBy(h => h.Index != plan.Host).FirstOrDefault(h => book().HasOpenTransaction(h.Name) && _pausedInTx.TryAdd((plan.Round, h.Name), plan.Id))) is null
                && Mono.Now() < until)
            {
                await Task.Delay(5, cancel);
            }

            host = inTx ?? host;
            record.Note = inTx is null ? "no-tx-seen" : "in-tx";
            if (inTx is null)
            {
                // Without an open guarded transaction it is a plain pause: recorded as one, not as this kind's case.
                plan = plan with { Kind = FaultKind.Pause };
                record.Plan = plan;
            }
        }

        record.HostName = host?.Name ?? "server";
        var history = cluster.History;
        void Begin(string detail = "", string? node = null)
        {
            record.Start = Mono.Now();
            // What the fault takes away: everything for a server fault; one node's singletons for pg_terminate_backend of
            // its session (the host's other `highlander run` processes keep theirs); else the host's.
            // (The checker asks again from the whole history: a start not read yet here is found there.)
            record.Node = node;
            record.Affected = host is null ? [.. cluster.Singletons] : book().LedAt(record.Start, host.Name, node);
            history.Write("fault-start", detail: string.Create(CultureInfo.InvariantCulture, $"id={plan.Id};kind={plan.Kind};host={record.HostName};{detail}"), mono: record.Start);
        }

        void Finish()
        {
            record.End = Mono.Now();
            history.Write("fault-end", detail: string.Create(CultureInfo.InvariantCulture, $"id={plan.Id};kind={plan.Kind};host={record.HostName};{record.Note}"), mono: record.End);
        }

        switch (plan.Kind)
        {
            case FaultKind.Stop:
            case FaultKind.Kill:
            {
                var signal = plan.Kind == FaultKind.Stop ? Native.SigTerm : Native.SigKill;
                var processes = host!.Processes;
                foreach (var p in processes)
                {
                    p.HoldDown();
                }

                var exits = processes.Select(p => p.Exited.Task).ToArray();
                var pids = plan.Kind == FaultKind.Kill ? host.AllPids() : [.. processes.Select(p => p.Pid).Where(p => p != 0)];
                Begin();
                if (plan.Kind == FaultKind.Kill)
                {
                    history.Write("kill", detail: "pid=" + string.Join(',', pids));
                }

                foreach (var pid in Enumerable.Reverse(pids))
                {
                    Native.Signal(pid, signal);
                }

                var allExited = Task.WhenAll(exits);
                if (await Task.WhenAny(allExited, Task.Delay(10_000, cancel)) != allExited && plan.Kind == FaultKind.Stop)
                {
                    record.Note = "did-not-stop-in-10s:killed";
                    var left = host.AllPids();
                    history.Write("kill", detail: "pid=" + string.Join(',', left));
                    foreach (var pid in left)
                    {
                        Native.Signal(pid, Native.SigKill);
                    }
                }

                await Task.Delay(plan.HoldMs, cancel);
                foreach (var p in processes)
                {
                    p.Release();
                }

                Finish();
                break;
            }

            case FaultKind.Pause:
            case FaultKind.PauseInTx:
            {
                var pids = host!.AllPids();
                Begin("pid=" + string.Join(',', pids));
                foreach (var pid in pids)
                {
                    Native.Signal(pid, Native.SigStop);
                }

                await Task.Delay(plan.HoldMs, cancel);
                foreach (var pid in pids)
                {
                    Native.Signal(pid, Native.SigCont);
                }

                Finish();
                break;
            }

            case FaultKind.Partition:
                Begin();
                await host!.PartitionAsync();
                await Task.Delay(plan.HoldMs, cancel);
                await host.HealAsync();
                Finish();
                break;
            case FaultKind.Terminate:
            {
                // A node that leads something (a follower's session ended takes nothing away, and checks nothing).
                var leading = book().Open.Select(l => l.Node).ToHashSet(StringComparer.Ordinal);
                var victims = host!.Processes.Where(p => leading.Contains(p.Node)).ToList() is { Count: > 0 } leaders ? leaders : host.Processes;
                var victim = victims[Math.Abs(plan.Id) % victims.Count];
                // Before the fault's start is taken: a node still reconnecting after the round before has no session to end
                // yet (seen in CI: terminated=0 right after a partition of the same host had healed).
                await cluster.WaitForLockSessionAsync(victim.Node, TimeSpan.FromSeconds(10), cancel);
                Begin("node=" + victim.Node, victim.Node);
                try
                {
                    var n = await cluster.TerminateLockSessionAsync(victim.Node);
                    record.Note = string.Create(CultureInfo.InvariantCulture, $"terminated={n}");
                    record.Injected = n > 0;
                }
                catch (Npgsql.NpgsqlException ex)
                {
                    record.Note = "failed:" + ex.Message.Replace(' ', '_');
                    record.Injected = false;
                }

                Finish();
                break;
            }

            case FaultKind.ServerRestart:
                Begin();
                await cluster.Server!.RestartAsync(Testing.ShutdownMode.Fast, cancel);
                Finish();
                break;
            case FaultKind.DatabaseDown:
                Begin();
                await cluster.Server!.StopAsync(Testing.ShutdownMode.Immediate, cancel);
                await Task.Delay(plan.HoldMs, cancel);
                await cluster.Server.StartAsync(cancel);
                Finish();
                break;
            case FaultKind.ClockJump when cluster.RealClockSteps:
            {
                // The machine's wall clock, for every process and the server; stepped back after the hold, whatever happens.
                // Small steps: PostgreSQL arms its timeouts (idle_session_timeout, the server's lease) on the wall clock.
                var step = Math.Sign(plan.Detail) * (10 + (Math.Abs(plan.Detail) % 51));
                Begin(string.Create(CultureInfo.InvariantCulture, $"offset={step}s;real"));
                if (!Native.StepWallClock(step))
                {
                    record.Injected = false;
                    record.Note = "clock_settime refused";
                }

                try
                {
                    await Task.Delay(plan.HoldMs, cancel);
                }
                finally
                {
                    if (record.Injected)
                    {
                        Native.StepWallClock(-step);
                    }
                }

                record.Detail = step;
                Finish();
                break;
            }

            case FaultKind.ClockJump:
                Begin(string.Create(CultureInfo.InvariantCulture, $"offset={plan.Detail}s"));
                await File.WriteAllTextAsync(host!.ClockFile!, string.Create(CultureInfo.InvariantCulture, $"{plan.Detail:+0;-0}\n"), cancel);
                await Task.Delay(plan.HoldMs, cancel);
                await File.WriteAllTextAsync(host.ClockFile!, "+0\n", CancellationToken.None);
                record.Detail = plan.Detail;
                Finish();
                break;
            case FaultKind.Starve:
            {
                var node = host!.Processes[0];
                node.HoldDown();
                Begin();
                await File.WriteAllTextAsync(host.StarveFile, "starve", cancel);
                var ended = await Task.WhenAny(node.Exited.Task, Task.Delay(plan.HoldMs, cancel)) == node.Exited.Task;
                record.Note = ended ? "process-ended-itself" : "still-alive:killed";
                if (!ended)
                {
                    var left = host.AllPids();
                    history.Write("kill", detail: "pid=" + string.Join(',', left));
                    foreach (var pid in left)
                    {
                        Native.Signal(pid, Native.SigKill);
                    }

                    await node.Exited.Task.WaitAsync(TimeSpan.FromSeconds(10), cancel);
                }

                File.Delete(host.StarveFile);
                node.Release();
                Finish();
                break;
            }
        }

        _ = settings;
        return record;
    }
}
