using System.Diagnostics;
using HighlanderPG.Cli.Configuration;
using HighlanderPG.Cli.Processes;
using HighlanderPG.Discovery;
using HighlanderPG.Testing.Journal;
using Npgsql;

namespace HighlanderPG.Cli.Demo;

/// <summary>
/// Watches the cluster from outside, as an operator would, and keeps the view current: the children's journal, who holds
/// the lock according to the database, and the node processes (one that exits by itself is a finding).
/// </summary>
internal sealed class ClusterObserver(DemoCluster cluster, DemoView view, DemoFindings findings)
{
    private static readonly TimeSpan SteadyTimeout = TimeSpan.FromSeconds(30);
    private volatile Discovered _discovered = new(null, null, [], [], false);

    private sealed record Discovered(string? Leader, long? Epoch, IReadOnlyList<string> Followers, IReadOnlyList<string> Connected, bool Reachable);

    /// <summary>The watchers, until <paramref name="cancellationToken"/> fires.</summary>
    public IEnumerable<Task> Start(CancellationToken cancellationToken) =>
    [
        Task.Run(() => WatchJournalAsync(cancellationToken), CancellationToken.None),
        Task.Run(() => WatchLeaderAsync(cancellationToken), CancellationToken.None),
        Task.Run(() => WatchNodesAsync(cancellationToken), CancellationToken.None),
    ];

    /// <summary>The child running now, per the journal: the last start with no stop, if its process is alive.</summary>
    public LifeEvent? RunningChild() =>
        cluster.Journal.Current(DemoCluster.SingletonName) is { } child && Native.ProcessAlive(child.Pid) ? child : null;

    /// <summary>All three nodes run, one child runs, and the database agrees on its node (and, shortly, sees both followers).</summary>
    public async Task<(DemoNode Leader, LifeEvent Child)> WaitSteadyAsync(CancellationToken cancellationToken)
    {
        var started = Stopwatch.GetTimestamp();
        while (true)
        {
            var child = RunningChild();
            var discovered = _discovered;
            if (child is not null && cluster.Nodes.All(n => n.IsRunning && !n.CutOff) && discovered.Leader == child.Node)
            {
                var waited = Stopwatch.GetElapsedTime(started);
                if (discovered.Followers.Count >= cluster.Nodes.Count - 1 || waited > TimeSpan.FromSeconds(8))
                {
                    return (cluster.Node(child.Node), child);
                }
            }

            if (Stopwatch.GetElapsedTime(started) > SteadyTimeout)
            {
                throw new InvalidOperationException($"the cluster did not settle within {Durations.Format(SteadyTimeout)} (one child, three nodes, leader known)");
            }

            // Three sources (journal, database, processes) with no common signal: look again shortly.
            await Task.Delay(100, cancellationToken).ConfigureAwait(false);
        }
    }

    /// <summary>The first child event from <paramref name="after"/> on that matches, or null after <paramref name="timeout"/>.</summary>
    public async Task<LifeEvent?> WaitChildAsync(Func<LifeEvent, bool> match, int after, TimeSpan timeout, CancellationToken cancellationToken)
    {
        try
        {
            return await cluster.Journal.WaitAsync(match, after, timeout, cancellationToken).ConfigureAwait(false);
        }
        catch (TimeoutException)
        {
            return null;
        }
    }

    private async Task WatchJournalAsync(CancellationToken cancellationToken)
    {
        var shown = 0;
        while (!cancellationToken.IsCancellationRequested)
        {
            try
            {
                cluster.Journal.Poll();
                var events = cluster.Journal.Events;
                foreach (var e in events.Skip(shown))
                {
                    var token = e.Token is null ? "" : $", fencing token {e.Token}";
                    switch (e.Kind)
                    {
                        case LifeKind.Started:
                            view.Event($"child started on {e.Node} (pid {e.Pid}{token})", "green");
                            break;
                        case LifeKind.Stopped:
                            view.Event($"child stopped on {e.Node} (pid {e.Pid})", "cyan");
                            break;
                        case LifeKind.Overlap:
                            view.Event($"child on {e.Node} (pid {e.Pid}) found another child still alive", "red bold");
                            break;
                    }
                }

                shown = events.Count;
                view.SetChild(RunningChild());
            }
            catch (IOException)
            {
            }

            await Pause(50, cancellationToken).ConfigureAwait(false);
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
                    new NpgsqlConnectionStringBuilder(cluster.Connection) { Timeout = 2, Pooling = false, ApplicationName = "highlander-demo" }.ConnectionString);
                await connection.OpenAsync(timeout.Token).ConfigureAwait(false);
                var all = await LeaderDiscovery.ListAsync(connection, [DemoCluster.SingletonName], cluster.Namespace, cancellationToken: timeout.Token).ConfigureAwait(false);
                var leader = all.FirstOrDefault(l => l.Key == cluster.Key);
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
                view.SetLeader(discovered.Leader, discovered.Epoch, discovered.Followers, discovered.Connected, true);
                if (discovered.Leader != lastLeader)
                {
                    view.Event(discovered.Leader is null ? "database: nobody holds the lock" : $"database: {discovered.Leader} holds the lock{(discovered.Epoch is { } epoch ? $" (epoch {epoch})" : "")}");
                    lastLeader = discovered.Leader;
                }
            }
            catch (Exception ex) when (ex is NpgsqlException or IOException or TimeoutException or System.Net.Sockets.SocketException
                || (ex is OperationCanceledException && !cancellationToken.IsCancellationRequested))
            {
                _discovered = new Discovered(null, null, [], [], false);
                view.SetLeader(null, null, [], [], false);
                lastLeader = null;
            }
            catch (OperationCanceledException)
            {
                return;
            }

            await Pause(300, cancellationToken).ConfigureAwait(false);
        }
    }

    private async Task WatchNodesAsync(CancellationToken cancellationToken)
    {
        var reported = new HashSet<(string, int)>();
        while (!cancellationToken.IsCancellationRequested)
        {
            foreach (var node in cluster.Nodes)
            {
                var process = node.Process;
                if (process is { HasExited: true } && node.Fate is null && reported.Add((node.Id, node.Generation)))
                {
                    node.Fate = $"exited (code {process.ExitCode})";
                    findings.Violation($"{node.Id} exited by itself with code {process.ExitCode}");
                    view.Event($"{node.Id} exited by itself with code {process.ExitCode}", "red bold");
                }

                view.SetNode(node.Id, node.Pid, node.CutOff, node.Process is null ? "not started" : node.Fate);
            }

            await Pause(100, cancellationToken).ConfigureAwait(false);
        }
    }

    private static async Task Pause(int milliseconds, CancellationToken cancellationToken)
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
