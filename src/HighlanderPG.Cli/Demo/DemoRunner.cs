using HighlanderPG.Cli.Configuration;
using HighlanderPG.Cli.Processes;
using HighlanderPG.Testing.Journal;
using Npgsql;
using Spectre.Console;

namespace HighlanderPG.Cli.Demo;

/// <summary>
/// <c>highlander demo</c>: three <c>highlander run</c> nodes as separate processes, each through its own fault proxy, and
/// faults injected in turn; checks that at most one child ever ran and that every fault was recovered from. This class
/// tells the story; <see cref="DemoCluster"/> sets up the server, proxies and nodes, <see cref="NodeLog"/> reads the
/// nodes' events by id, <see cref="ClusterObserver"/> watches, <see cref="DemoFaults"/> injects, <see cref="FaultJudge"/>
/// checks and measures, <see cref="DemoView"/> and <see cref="DemoSummary"/> render.
/// </summary>
internal sealed class DemoRunner
{
    private readonly TimeSpan _duration;
    private readonly DemoView _view;
    private readonly DemoFindings _findings = new();
    private readonly DemoCluster _cluster;
    private readonly ClusterObserver _observer;
    private readonly List<FaultResult> _results = [];

    public DemoRunner(TimeSpan duration, ResolvedConnection? external, bool live)
    {
        _duration = duration;
        _view = new DemoView(live, duration);
        _cluster = new DemoCluster(_view, external, new NodeLog(_view).OnLine);
        _observer = new ClusterObserver(_cluster, _view, _findings);
    }

    public async Task<int> RunAsync(CancellationToken interrupted)
    {
        foreach (var program in new[] { "setpriv", "setsid", "sh", "flock", "date" })
        {
            if (ProcessLauncher.FindProgram(program) is null)
            {
                Diagnostics.Say.Error("demo", $"'{program}' was not found on PATH (util-linux and coreutils are needed)");
                return ExitCodes.Usage;
            }
        }

        using var budget = CancellationTokenSource.CreateLinkedTokenSource(interrupted);
        budget.CancelAfter(_duration);
        var failed = true; // until it ran to an end: then only if it found a violation
        var exitCode = ExitCodes.Failure;
        try
        {
            if (_view.Live)
            {
                await AnsiConsole.Live(_view.Render()).AutoClear(false).StartAsync(async context =>
                {
                    using var stopRefresh = new CancellationTokenSource();
                    var refresh = Task.Run(async () =>
                    {
                        while (!stopRefresh.IsCancellationRequested)
                        {
                            context.UpdateTarget(_view.Render());
                            await Task.Delay(150, CancellationToken.None).ConfigureAwait(false);
                        }
                    }, CancellationToken.None);
                    try
                    {
                        exitCode = await RunScenarioAsync(budget.Token, interrupted).ConfigureAwait(false);
                    }
                    finally
                    {
                        await stopRefresh.CancelAsync().ConfigureAwait(false);
                        await refresh.ConfigureAwait(false);
                        context.UpdateTarget(_view.Render());
                    }
                }).ConfigureAwait(false);
            }
            else
            {
                exitCode = await RunScenarioAsync(budget.Token, interrupted).ConfigureAwait(false);
            }

            failed = exitCode == ExitCodes.Failure;
        }
        finally
        {
            await _cluster.CleanUpAsync(keepFiles: failed).ConfigureAwait(false);
        }

        if (exitCode != ExitCodes.Usage)
        {
            // A usage error (a connection the demo cannot use) was said already, before anything ran: no empty table.
            DemoSummary.Print(exitCode, _results, _findings, _view.Elapsed, _cluster.WorkDir);
        }

        return exitCode;
    }

    private async Task<int> RunScenarioAsync(CancellationToken budget, CancellationToken interrupted)
    {
        using var loops = new CancellationTokenSource();
        var background = new List<Task>();
        try
        {
            if (!await _cluster.SetUpAsync(budget).ConfigureAwait(false))
            {
                return ExitCodes.Usage;
            }

            background.AddRange(_observer.Start(loops.Token));

            // n1 first, so the story starts with a known leader; then the two followers.
            _view.SetStep("starting node n1");
            await _cluster.Nodes[0].StartAsync().ConfigureAwait(false);
            if (await _observer.WaitChildAsync(e => e.Kind == LifeKind.Started, 0, TimeSpan.FromSeconds(30), budget).ConfigureAwait(false) is null)
            {
                _findings.Violation("the first node's child did not start within 30 s");
                return ExitCodes.Failure;
            }

            _view.SetStep("starting nodes n2 and n3");
            await _cluster.Nodes[1].StartAsync().ConfigureAwait(false);
            await _cluster.Nodes[2].StartAsync().ConfigureAwait(false);

            var faults = new DemoFaults(_cluster, _view, _findings).All();
            for (var i = 0; i < faults.Count; i++)
            {
                var remaining = _duration - _view.Elapsed;
                if (remaining < faults[i].Needs)
                {
                    _findings.Note($"skipped for lack of time (--duration {Durations.Format(_duration)}): {string.Join(", ", faults.Skip(i).Select(f => f.Title))}");
                    break;
                }

                var result = await InjectAsync(faults[i], i + 1, faults.Count, budget).ConfigureAwait(false);
                _results.Add(result);
                _view.Event($"→ {result.Fault}: {result.Verdict}", !result.Ok ? "red bold" : result.OldStoppedFirst ? "green" : "yellow");
                if (_view.Live && i < faults.Count - 1)
                {
                    await Task.Delay(1500, budget).ConfigureAwait(false); // pacing, so a person can follow
                }
            }

            _view.SetStep("done");
            return _findings.Violations.Count == 0 ? ExitCodes.Ok : ExitCodes.Failure;
        }
        catch (OperationCanceledException) when (interrupted.IsCancellationRequested)
        {
            _view.SetStep("interrupted: cleaning up");
            return ExitCodes.Interrupted;
        }
        catch (OperationCanceledException) when (budget.IsCancellationRequested)
        {
            _findings.Violation($"the demo did not finish within --duration {Durations.Format(_duration)}");
            _view.SetStep("out of time: cleaning up");
            return ExitCodes.Failure;
        }
        catch (Exception ex) when (ex is InvalidOperationException or NpgsqlException or IOException)
        {
            _findings.Violation($"the demo failed: {ex.Message}");
            return ExitCodes.Failure;
        }
        finally
        {
            await loops.CancelAsync().ConfigureAwait(false);
            await Task.WhenAll(background).ConfigureAwait(false);
        }
    }

    /// <summary>Waits for a steady cluster, injects a fault into the leader, waits for a new child, and judges what followed.</summary>
    private async Task<FaultResult> InjectAsync(DemoFault fault, int number, int count, CancellationToken cancellationToken)
    {
        var (leader, child) = await _observer.WaitSteadyAsync(cancellationToken).ConfigureAwait(false);
        _cluster.Journal.Poll(); // everything written before the fault is before the mark
        var mark = _cluster.Journal.Count;
        _view.SetStep($"fault {number}/{count}: {fault.Title} — leader {leader.Id}");
        var injected = DateTimeOffset.UtcNow;
        await fault.Inject(leader, child, cancellationToken).ConfigureAwait(false);

        var next = await _observer.WaitChildAsync(e => e.Kind == LifeKind.Started, mark, fault.RecoveryBound, cancellationToken).ConfigureAwait(false);
        var result = FaultJudge.Judge(fault, leader, child, mark, injected, next, _cluster.Journal.Events, Native.ProcessAlive(child.Pid), _findings);
        if (fault.Afterward is not null)
        {
            await fault.Afterward(leader, child).ConfigureAwait(false);
        }

        return result;
    }
}
