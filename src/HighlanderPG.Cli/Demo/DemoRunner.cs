using System.Diagnostics;
using System.Globalization;
using System.Text.RegularExpressions;
using HighlanderPG.Cli.Configuration;
using HighlanderPG.Cli.Processes;
using HighlanderPG.Discovery;
using HighlanderPG.Testing;
using HighlanderPG.Testing.Journal;
using Npgsql;
using Spectre.Console;

namespace HighlanderPG.Cli.Demo;

/// <summary>What happened after one fault.</summary>
internal sealed record FaultResult(
    string Fault,
    string? LeaderBefore,
    string? LeaderAfter,
    string OldChild,
    TimeSpan? NewChildAfter,
    bool OldStoppedFirst,
    string Verdict,
    bool Ok,
    TimeSpan? KnownOverlap = null);

/// <summary>
/// <c>highlander demo</c>: three <c>highlander run</c> nodes as separate processes, each through its own fault proxy, and
/// faults injected in turn; checks that at most one child ever ran and that every fault was recovered from.
/// </summary>
internal sealed class DemoRunner(TimeSpan duration, ResolvedConnection? external, bool live)
{
    public const string SingletonName = "demo";
    private static readonly string[] NodeIds = ["n1", "n2", "n3"];
    private static readonly TimeSpan Lease = TimeSpan.FromSeconds(3);
    private static readonly TimeSpan SteadyTimeout = TimeSpan.FromSeconds(30);
    private static readonly HashSet<int> ShownEvents = [1003, 1005, 1006, 1100, 1101, 1102, 1300, 1301, 1302, 2002, 2003, 2004, 2005];

    private readonly DemoView _view = new(live, duration);
    private readonly List<DemoNode> _nodes = [];
    private readonly List<FaultResult> _results = [];
    private readonly List<string> _violations = [];
    private readonly List<string> _notes = [];
    private LocalPostgresServer? _server;
    private string _connection = "";
    private string _namespace = "";
    private string _workDir = "";
    private LifeJournal _log = null!;
    private long _key;
    private volatile Discovered _discovered = new(null, null, [], [], false);

    private sealed record Discovered(string? Leader, long? Epoch, IReadOnlyList<string> Followers, IReadOnlyList<string> Connected, bool Reachable);

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
        budget.CancelAfter(duration);
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
            await CleanUpAsync(keepFiles: failed).ConfigureAwait(false);
        }

        PrintSummary(exitCode);
        return exitCode;
    }

    private async Task<int> RunScenarioAsync(CancellationToken budget, CancellationToken interrupted)
    {
        using var loops = new CancellationTokenSource();
        var background = new List<Task>();
        try
        {
            if (!await SetUpAsync(budget).ConfigureAwait(false))
            {
                return ExitCodes.Usage;
            }

            background.Add(Task.Run(() => WatchChildLogAsync(loops.Token), CancellationToken.None));
            background.Add(Task.Run(() => WatchLeaderAsync(loops.Token), CancellationToken.None));
            background.Add(Task.Run(() => WatchNodesAsync(loops.Token), CancellationToken.None));

            // n1 first, so the story starts with a known leader; then the two followers.
            _view.SetStep("starting node n1");
            await _nodes[0].StartAsync().ConfigureAwait(false);
            if (await WaitChildAsync(e => e.Kind == LifeKind.Started, 0, TimeSpan.FromSeconds(30), budget).ConfigureAwait(false) is null)
            {
                _violations.Add("the first node's child did not start within 30 s");
                return ExitCodes.Failure;
            }

            _view.SetStep("starting nodes n2 and n3");
            await _nodes[1].StartAsync().ConfigureAwait(false);
            await _nodes[2].StartAsync().ConfigureAwait(false);

            var faults = new List<(string Title, TimeSpan Needs, Func<int, int, CancellationToken, Task<FaultResult>> Run)>
            {
                ("graceful stop (SIGTERM) of the leader", TimeSpan.FromSeconds(12), GracefulStopAsync),
                ("kill -9 of the leader", TimeSpan.FromSeconds(12), KillAsync),
                ("leader cut off (proxy blackhole)", TimeSpan.FromSeconds(18), CutOffAsync),
                ("leader's backend killed (pg_terminate_backend)", TimeSpan.FromSeconds(12), TerminateBackendAsync),
            };
            if (_server is not null)
            {
                faults.Add(("server restart", TimeSpan.FromSeconds(20), RestartServerAsync));
            }
            else
            {
                _notes.Add("server restart skipped: the demo restarts only a server it started itself");
            }

            for (var i = 0; i < faults.Count; i++)
            {
                var remaining = duration - _view.Elapsed;
                if (remaining < faults[i].Needs)
                {
                    _notes.Add($"skipped for lack of time (--duration {Durations.Format(duration)}): {string.Join(", ", faults.Skip(i).Select(f => f.Title))}");
                    break;
                }

                var result = await faults[i].Run(i + 1, faults.Count, budget).ConfigureAwait(false);
                _results.Add(result);
                _view.Event($"→ {result.Fault}: {result.Verdict}", !result.Ok ? "red bold" : result.OldStoppedFirst ? "green" : "yellow");
                if (_view.Live && i < faults.Count - 1)
                {
                    await Task.Delay(1500, budget).ConfigureAwait(false); // pacing, so a person can follow
                }
            }

            _view.SetStep("done");
            return _violations.Count == 0 ? ExitCodes.Ok : ExitCodes.Failure;
        }
        catch (OperationCanceledException) when (interrupted.IsCancellationRequested)
        {
            _view.SetStep("interrupted: cleaning up");
            return ExitCodes.Interrupted;
        }
        catch (OperationCanceledException) when (budget.IsCancellationRequested)
        {
            _violations.Add($"the demo did not finish within --duration {Durations.Format(duration)}");
            _view.SetStep("out of time: cleaning up");
            return ExitCodes.Failure;
        }
        catch (Exception ex) when (ex is InvalidOperationException or NpgsqlException or IOException)
        {
            _violations.Add($"the demo failed: {ex.Message}");
            return ExitCodes.Failure;
        }
        finally
        {
            await loops.CancelAsync().ConfigureAwait(false);
            await Task.WhenAll(background).ConfigureAwait(false);
        }
    }

    private async Task<bool> SetUpAsync(CancellationToken cancellationToken)
    {
        _workDir = Directory.CreateTempSubdirectory("highlander-demo-").FullName;
        _log = new LifeJournal(Path.Combine(_workDir, "child.log"));
        var script = Path.Combine(_workDir, "child.sh");
        await LifeJournal.WriteChildScriptAsync(script, cancellationToken).ConfigureAwait(false);
        if (external is not null)
        {
            _connection = external.ConnectionString;
            _view.SetServer($"{external.Display} (from {external.Source})");
        }
        else
        {
            _view.SetStep("starting a throwaway PostgreSQL (LocalPostgresServer)");
            try
            {
                _server = await LocalPostgresServer.StartAsync(cancellationToken: cancellationToken).ConfigureAwait(false);
            }
            catch (InvalidOperationException ex)
            {
                Diagnostics.Say.Error("demo", $"cannot start a throwaway PostgreSQL: {ex.Message}\nInstall PostgreSQL (e.g. apt-get install postgresql) or give --connection.");
                return false;
            }

            _connection = _server.ConnectionString;
            _view.SetServer($"{ConnectionResolver.Describe(_connection)} (throwaway PostgreSQL {_server.ServerVersion})");
        }

        var target = new NpgsqlConnectionStringBuilder(_connection);
        if (string.IsNullOrEmpty(target.Host) || target.Host.Contains(',', StringComparison.Ordinal) || target.Host.StartsWith('/'))
        {
            Diagnostics.Say.Error("demo", "the demo needs a single TCP host to put its fault proxies in front of (not a unix socket or a host list)");
            return false;
        }

        await ProcessLauncher.Shared.WarmUpAsync().ConfigureAwait(false);
        _namespace = "demo-" + Guid.NewGuid().ToString("N")[..8];
        _key = SingletonKey.Derive(_namespace, SingletonName);
        var fencing = _server is not null; // never create tables in a database the demo does not own
        var self = SelfCommand();
        foreach (var id in NodeIds)
        {
            var proxy = FaultProxy.Start(target.Host, target.Port);
            var nodeConnection = new NpgsqlConnectionStringBuilder(proxy.ConnectionString(_connection)) { Timeout = 5 }.ConnectionString;
            var node = new DemoNode(
                id,
                proxy,
                _ => new LaunchSpec(self.FileName, [
                    .. self.Prefix, "run", "--name", SingletonName, "--namespace", _namespace, "--node-id", id,
                    "--lease", "3s", "--heartbeat", "500ms", "--stop-timeout", "1s", "--safety-margin", "500ms", "--restart-delay", "200ms",
                    .. fencing ? new[] { "--fencing" } : [], "--log-level", "information",
                    "--", ProcessLauncher.FindProgram("sh") ?? "/bin/sh", script])
                {
                    RedirectOutput = true,
                    Environment = new Dictionary<string, string?>
                    {
                        // Not on the command line: a password would show in ps.
                        [ConnectionResolver.EnvironmentVariable] = nodeConnection,
                    }.Concat(_log.ChildEnvironment().Select(v => KeyValuePair.Create(v.Key, (string?)v.Value))).ToDictionary(),
                },
                OnNodeLine,
                Path.Combine(_workDir, id + ".log"));
            _nodes.Add(node);
        }

        _view.Event($"namespace {_namespace}; lease 3s, heartbeat 500ms, stop timeout 1s, safety margin 500ms{(fencing ? ", fencing on" : "")}; files in {_workDir}");
        return true;
    }

    private async Task<FaultResult> GracefulStopAsync(int number, int count, CancellationToken cancellationToken) =>
        await InjectAsync(number, count, "graceful stop (SIGTERM) of the leader", orderGuaranteed: true, cancellationToken,
            inject: (leader, _) =>
            {
                leader.Fate = "stopped (SIGTERM)";
                leader.Signal(Native.SigTerm);
                return Task.CompletedTask;
            },
            afterward: async (leader, _) =>
            {
                var code = await leader.WaitForExitAsync(TimeSpan.FromSeconds(10)).ConfigureAwait(false);
                if (code != ExitCodes.Ok)
                {
                    _violations.Add($"{leader.Id} exited with {(code is null ? "no exit within 10 s" : "code " + code)} after SIGTERM (expected 0)");
                }

                _view.Event($"{leader.Id} exited with code {code?.ToString(CultureInfo.InvariantCulture) ?? "?"}; restarting it");
                await leader.StartAsync().ConfigureAwait(false);
            }).ConfigureAwait(false);

    private async Task<FaultResult> KillAsync(int number, int count, CancellationToken cancellationToken) =>
        await InjectAsync(number, count, "kill -9 of the leader", orderGuaranteed: true, cancellationToken,
            inject: (leader, _) =>
            {
                leader.Fate = "killed (SIGKILL)";
                leader.Signal(Native.SigKill);
                return Task.CompletedTask;
            },
            afterward: async (leader, child) =>
            {
                await leader.WaitForExitAsync(TimeSpan.FromSeconds(10)).ConfigureAwait(false);
                if (Native.ProcessAlive(child.Pid))
                {
                    _violations.Add($"the child (pid {child.Pid}) survived its node's SIGKILL");
                }

                _view.Event($"{leader.Id} is gone and its child pid {child.Pid} with it; restarting {leader.Id}");
                await leader.StartAsync().ConfigureAwait(false);
            }).ConfigureAwait(false);

    private async Task<FaultResult> CutOffAsync(int number, int count, CancellationToken cancellationToken) =>
        await InjectAsync(number, count, "leader cut off (proxy blackhole)", orderGuaranteed: true, cancellationToken,
            inject: (leader, _) =>
            {
                leader.CutOff = true;
                leader.Proxy.SetMode(ProxyMode.Blackhole);
                return Task.CompletedTask;
            },
            afterward: (leader, _) =>
            {
                leader.Proxy.SetMode(ProxyMode.Pass);
                leader.CutOff = false;
                _view.Event($"{leader.Id}'s network healed: it reconnects and follows");
                return Task.CompletedTask;
            }).ConfigureAwait(false);

    private async Task<FaultResult> TerminateBackendAsync(int number, int count, CancellationToken cancellationToken) =>
        await InjectAsync(number, count, "leader's backend killed (pg_terminate_backend)", orderGuaranteed: false, cancellationToken,
            inject: async (leader, _) =>
            {
                await using var connection = new NpgsqlConnection(new NpgsqlConnectionStringBuilder(_connection) { Pooling = false, ApplicationName = "highlander-demo" }.ConnectionString);
                await connection.OpenAsync(cancellationToken).ConfigureAwait(false);
                await using var command = new NpgsqlCommand(
                    """
                    SELECT pid, pg_terminate_backend(pid) FROM pg_locks
                    WHERE locktype = 'advisory' AND granted AND mode = 'ExclusiveLock' AND objsubid = 1
                      AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
                      AND ((classid::bigint << 32) | objid::bigint) = $1
                    """,
                    connection);
                command.Parameters.Add(new NpgsqlParameter<long> { TypedValue = _key });
                var pid = await command.ExecuteScalarAsync(cancellationToken).ConfigureAwait(false);
                _view.Event($"pg_terminate_backend({pid}) — {leader.Id}'s lock session");
            },
            afterward: null).ConfigureAwait(false);

    private async Task<FaultResult> RestartServerAsync(int number, int count, CancellationToken cancellationToken) =>
        await InjectAsync(number, count, "server restart", orderGuaranteed: true, cancellationToken,
            inject: async (_, _) =>
            {
                await _server!.RestartAsync(ShutdownMode.Fast, cancellationToken).ConfigureAwait(false);
                _view.Event("server back up; nodes wait out the lock-delay (= lease) before taking the lock");
            },
            afterward: null).ConfigureAwait(false);

    /// <summary>Waits for a steady cluster, injects a fault into the leader, and records what followed.</summary>
    private async Task<FaultResult> InjectAsync(
        int number,
        int count,
        string title,
        bool orderGuaranteed,
        CancellationToken cancellationToken,
        Func<DemoNode, LifeEvent, Task> inject,
        Func<DemoNode, LifeEvent, Task>? afterward)
    {
        var (leader, child) = await WaitSteadyAsync(cancellationToken).ConfigureAwait(false);
        var mark = _log.Count;
        _view.SetStep($"fault {number}/{count}: {title} — leader {leader.Id}");
        var injected = DateTimeOffset.UtcNow;
        await inject(leader, child).ConfigureAwait(false);

        var bound = title == "server restart" ? TimeSpan.FromSeconds(15) : Lease + TimeSpan.FromSeconds(7);
        var next = await WaitChildAsync(e => e.Kind == LifeKind.Started, mark, bound, cancellationToken).ConfigureAwait(false);
        var events = _log.Events;
        var overlap = events.Any(e => e.Kind == LifeKind.Overlap && e.Seq >= mark && (next is null || e.Seq < next.Seq));
        var stop = events.FirstOrDefault(e => e.Kind == LifeKind.Stopped && e.Pid == child.Pid);
        var oldChild = stop is not null && (next is null || stop.Seq < next.Seq) ? $"stopped after {Ms(stop.At - injected)}"
            : overlap ? "STILL RUNNING when the new one started"
            : !Native.ProcessAlive(child.Pid) ? "killed with its node"
            : "still running";
        string verdict;
        var ok = true;
        TimeSpan? knownOverlap = null;
        if (next is null)
        {
            verdict = $"NOT RECOVERED within {Durations.Format(bound)}";
            ok = false;
            _violations.Add($"{title}: no child ran again within {Durations.Format(bound)}");
        }
        else if (overlap && orderGuaranteed)
        {
            verdict = "TWO CHILDREN AT ONCE";
            ok = false;
            _violations.Add($"{title}: the new child on {next.Node} started while the old one on {leader.Id} still ran");
        }
        else if (overlap)
        {
            // Not a broken promise: the lease cannot cover this (docs/cli.md, "What the demo shows"); fencing tokens do.
            var seen = events.First(e => e.Kind == LifeKind.Overlap && e.Seq >= mark);
            knownOverlap = stop is not null ? stop.At - seen.At : null;
            verdict = $"overlap{(knownOverlap is { } length ? " " + Ms(length) : "")}: needs fencing";
            _notes.Add("pg_terminate_backend frees the lock before its holder can know: the holder stops its child at once, but another node may start first. That is what fencing tokens are for (HIGHLANDER_FENCING_TOKEN): guard writes with them.");
        }
        else
        {
            verdict = "ok";
        }

        if (afterward is not null)
        {
            await afterward(leader, child).ConfigureAwait(false);
        }

        return new FaultResult(title, leader.Id, next?.Node, oldChild, next is null ? null : next.At - injected, !overlap, verdict, ok, knownOverlap);
    }

    /// <summary>All three nodes run, one child runs, and the database agrees on its node (and, shortly, sees both followers).</summary>
    private async Task<(DemoNode Leader, LifeEvent Child)> WaitSteadyAsync(CancellationToken cancellationToken)
    {
        var started = Stopwatch.GetTimestamp();
        while (true)
        {
            var child = RunningChild();
            var discovered = _discovered;
            if (child is not null && _nodes.All(n => n.IsRunning && !n.CutOff) && discovered.Leader == child.Node)
            {
                var waited = Stopwatch.GetElapsedTime(started);
                if (discovered.Followers.Count >= _nodes.Count - 1 || waited > TimeSpan.FromSeconds(8))
                {
                    return (_nodes.Single(n => n.Id == child.Node), child);
                }
            }

            if (Stopwatch.GetElapsedTime(started) > SteadyTimeout)
            {
                throw new InvalidOperationException($"the cluster did not settle within {Durations.Format(SteadyTimeout)} (one child, three nodes, leader known)");
            }

            await Task.Delay(100, cancellationToken).ConfigureAwait(false);
        }
    }

    /// <summary>The child running now, per the journal: the last start with no stop, if its process is alive.</summary>
    private LifeEvent? RunningChild() => _log.Current(SingletonName) is { } child && Native.ProcessAlive(child.Pid) ? child : null;

    private async Task<LifeEvent?> WaitChildAsync(Func<LifeEvent, bool> match, int after, TimeSpan timeout, CancellationToken cancellationToken)
    {
        try
        {
            return await _log.WaitAsync(match, after, timeout, cancellationToken).ConfigureAwait(false);
        }
        catch (TimeoutException)
        {
            return null;
        }
    }

    private async Task WatchChildLogAsync(CancellationToken cancellationToken)
    {
        var shown = 0;
        while (!cancellationToken.IsCancellationRequested)
        {
            try
            {
                _log.Poll();
                var events = _log.Events;
                foreach (var e in events.Skip(shown))
                {
                    var token = e.Token is null ? "" : $", fencing token {e.Token}";
                    switch (e.Kind)
                    {
                        case LifeKind.Started:
                            _view.Event($"child started on {e.Node} (pid {e.Pid}{token})", "green");
                            break;
                        case LifeKind.Stopped:
                            _view.Event($"child stopped on {e.Node} (pid {e.Pid})", "cyan");
                            break;
                        case LifeKind.Overlap:
                            _view.Event($"child on {e.Node} (pid {e.Pid}) found another child still alive", "red bold");
                            break;
                    }
                }

                shown = events.Count;
                _view.SetChild(RunningChild());
            }
            catch (IOException)
            {
            }

            await Delay(50, cancellationToken).ConfigureAwait(false);
        }
    }

    private async Task WatchLeaderAsync(CancellationToken cancellationToken)
    {
        string? lastLeader = null;
        while (!cancellationToken.IsCancellationRequested)
        {
            try
            {
                using var timeout = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
                timeout.CancelAfter(TimeSpan.FromSeconds(2));
                await using var connection = new NpgsqlConnection(
                    new NpgsqlConnectionStringBuilder(_connection) { Timeout = 2, Pooling = false, ApplicationName = "highlander-demo" }.ConnectionString);
                await connection.OpenAsync(timeout.Token).ConfigureAwait(false);
                var all = await LeaderDiscovery.ListAsync(connection, [SingletonName], _namespace, cancellationToken: timeout.Token).ConfigureAwait(false);
                var leader = all.FirstOrDefault(l => l.Key == _key);
                var connected = new List<string>();
                await using (var command = new NpgsqlCommand("SELECT substr(application_name, 12) FROM pg_stat_activity WHERE application_name LIKE 'highlander/%'", connection))
                await using (var reader = await command.ExecuteReaderAsync(timeout.Token).ConfigureAwait(false))
                {
                    while (await reader.ReadAsync(timeout.Token).ConfigureAwait(false))
                    {
                        connected.Add(reader.GetString(0));
                    }
                }

                var discovered = new Discovered(leader?.Leader.NodeId, leader?.FencingEpoch, leader?.Followers.Select(f => f.NodeId ?? "?").ToList() ?? [], connected, true);
                _discovered = discovered;
                _view.SetLeader(discovered.Leader, discovered.Epoch, discovered.Followers, discovered.Connected, true);
                if (discovered.Leader != lastLeader)
                {
                    _view.Event(discovered.Leader is null ? "database: nobody holds the lock" : $"database: {discovered.Leader} holds the lock{(discovered.Epoch is { } epoch ? $" (epoch {epoch})" : "")}");
                    lastLeader = discovered.Leader;
                }
            }
            catch (Exception ex) when (ex is NpgsqlException or IOException or TimeoutException or System.Net.Sockets.SocketException
                || (ex is OperationCanceledException && !cancellationToken.IsCancellationRequested))
            {
                _discovered = new Discovered(null, null, [], [], false);
                _view.SetLeader(null, null, [], [], false);
                lastLeader = null;
            }
            catch (OperationCanceledException)
            {
                return;
            }

            await Delay(300, cancellationToken).ConfigureAwait(false);
        }
    }

    private async Task WatchNodesAsync(CancellationToken cancellationToken)
    {
        var reported = new HashSet<(string, int)>();
        while (!cancellationToken.IsCancellationRequested)
        {
            foreach (var node in _nodes)
            {
                var process = node.Process;
                if (process is { HasExited: true } && node.Fate is null && reported.Add((node.Id, node.Generation)))
                {
                    node.Fate = $"exited (code {process.ExitCode})";
                    _violations.Add($"{node.Id} exited by itself with code {process.ExitCode}");
                    _view.Event($"{node.Id} exited by itself with code {process.ExitCode}", "red bold");
                }

                _view.SetNode(node.Id, node.Pid, node.CutOff, node.Process is null ? "not started" : node.Fate);
            }

            await Delay(100, cancellationToken).ConfigureAwait(false);
        }
    }

    private void OnNodeLine(DemoNode node, string line)
    {
        var match = DemoNode.LogLine().Match(line);
        if (!match.Success)
        {
            if (line.StartsWith("highlander", StringComparison.Ordinal))
            {
                _view.Event($"{node.Id}: {line}", "red");
            }

            return;
        }

        var id = int.Parse(match.Groups["id"].Value, CultureInfo.InvariantCulture);
        var level = match.Groups["level"].Value;
        if (ShownEvents.Contains(id) || level == "crit")
        {
            _view.Event($"{node.Id}: {Shorten(match.Groups["message"].Value)}", level switch { "warn" => "yellow", "fail" or "crit" => "red", _ => "" });
        }
    }

    /// <summary>A node's log message, made to fit one line of the view: no keys, short durations, no explanations.</summary>
    internal static string Shorten(string message)
    {
        message = Regex.Replace(message, @" \(key -?\d+\)", "");
        message = Regex.Replace(message, @"\b\d{2}:\d{2}:\d{2}(\.\d+)?\b", m =>
        {
            var time = TimeSpan.Parse(m.Value, CultureInfo.InvariantCulture);
            return time < TimeSpan.FromSeconds(1) ? Ms(time) : time.TotalSeconds.ToString("0.00", CultureInfo.InvariantCulture) + " s";
        });
        foreach (var cut in new[] { ". Every singleton", " so that holders", " before the server may" })
        {
            var at = message.IndexOf(cut, StringComparison.Ordinal);
            if (at > 0)
            {
                message = message[..at];
            }
        }

        return message;
    }

    private async Task CleanUpAsync(bool keepFiles)
    {
        foreach (var node in _nodes)
        {
            try
            {
                node.Proxy.SetMode(ProxyMode.Pass);
            }
            catch (ObjectDisposedException)
            {
            }

            node.CutOff = false;
            if (node.IsRunning)
            {
                node.Fate = "stopped (end of demo)";
                node.Signal(Native.SigTerm);
            }
        }

        foreach (var node in _nodes)
        {
            if (await node.WaitForExitAsync(TimeSpan.FromSeconds(8)).ConfigureAwait(false) is null && node.Process is { HasExited: false })
            {
                node.Signal(Native.SigKill);
                await node.WaitForExitAsync(TimeSpan.FromSeconds(2)).ConfigureAwait(false);
            }
        }

        foreach (var node in _nodes)
        {
            await node.Proxy.DisposeAsync().ConfigureAwait(false);
        }

        if (_server is not null)
        {
            await _server.DisposeAsync().ConfigureAwait(false);
        }

        if (!keepFiles && _workDir.Length > 0)
        {
            try
            {
                Directory.Delete(_workDir, recursive: true);
            }
            catch (IOException)
            {
            }
        }
    }

    private void PrintSummary(int exitCode)
    {
        if (Console.IsOutputRedirected && AnsiConsole.Profile.Width < 200)
        {
            AnsiConsole.Profile.Width = 200; // a log or CI output: wide enough that the table does not wrap (it is only as wide as its cells)
        }

        var table = new Table().Border(TableBorder.Rounded).Title("What happened after each fault");
        foreach (var column in new[] { "#", "fault", "leader → new leader", "old child", "new child ran after", "old stopped first", "verdict" })
        {
            table.AddColumn(column);
        }

        for (var i = 0; i < _results.Count; i++)
        {
            var r = _results[i];
            table.AddRow(
                (i + 1).ToString(CultureInfo.InvariantCulture),
                Markup.Escape(r.Fault),
                Markup.Escape($"{r.LeaderBefore ?? "?"} → {r.LeaderAfter ?? "none"}"),
                Markup.Escape(r.OldChild),
                r.NewChildAfter is { } after ? Ms(after) : "[red]never[/]",
                r.OldStoppedFirst ? "yes" : r.Ok ? "[yellow]no[/]" : "[red]NO[/]",
                !r.Ok ? $"[red]{Markup.Escape(r.Verdict)}[/]" : r.OldStoppedFirst ? $"[green]{Markup.Escape(r.Verdict)}[/]" : $"[yellow]{Markup.Escape(r.Verdict)}[/]");
        }

        AnsiConsole.Write(table);
        foreach (var note in _notes.Distinct())
        {
            AnsiConsole.MarkupLine($"[grey]note: {Markup.Escape(note)}[/]");
        }

        if (exitCode == ExitCodes.Ok)
        {
            var known = _results.Where(r => r.Ok && !r.OldStoppedFirst).ToList();
            AnsiConsole.MarkupLine(known.Count == 0
                ? $"[green bold]Invariants held:[/] never two children at once (a kernel flock witnessed every start), and every fault was recovered from ({_results.Count} faults in {DemoView.Format(_view.Elapsed)})."
                : $"[green bold]Invariants held[/] for every fault the lease covers: no two children at once there (a kernel flock witnessed every start), and every fault was recovered from ({_results.Count} faults in {DemoView.Format(_view.Elapsed)}). "
                  + $"[yellow]{Markup.Escape(string.Join("; ", known.Select(r => r.Fault)))}: the old and new child overlapped{(known[0].KnownOverlap is { } length ? " for " + Ms(length) : "")}, which only fencing prevents (see the note).[/]");
        }
        else if (exitCode == ExitCodes.Interrupted)
        {
            AnsiConsole.MarkupLine("[yellow]Interrupted; everything the demo started was stopped.[/]");
        }
        else
        {
            foreach (var violation in _violations)
            {
                AnsiConsole.MarkupLine($"[red bold]FAILED:[/] {Markup.Escape(violation)}");
            }

            if (_workDir.Length > 0 && Directory.Exists(_workDir))
            {
                AnsiConsole.MarkupLine($"[grey]Node logs and the child log are kept in {Markup.Escape(_workDir)}[/]");
            }
        }
    }

    /// <summary>How to start this same tool: the apphost itself, or <c>dotnet highlander.dll</c>.</summary>
    internal static (string FileName, string[] Prefix) SelfCommand()
    {
        var processPath = Environment.ProcessPath ?? throw new InvalidOperationException("Cannot tell which program this is (no process path).");
        var assembly = typeof(DemoRunner).Assembly.Location;
        return Path.GetFileNameWithoutExtension(processPath) == "dotnet" && assembly.Length > 0
            ? (processPath, [assembly])
            : (processPath, []);
    }

    private static string Ms(TimeSpan time) => time.TotalMilliseconds.ToString("0", CultureInfo.InvariantCulture) + " ms";

    private static async Task Delay(int milliseconds, CancellationToken cancellationToken)
    {
        try
        {
            await Task.Delay(milliseconds, cancellationToken).ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
        }
    }
}
