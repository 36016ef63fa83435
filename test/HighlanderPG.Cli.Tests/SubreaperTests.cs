using HighlanderPG.Cli.Processes;
using HighlanderPG.Cli.Tests.Infrastructure;
using HighlanderPG.Diagnostics;

namespace HighlanderPG.Cli.Tests;

/// <summary>
/// <c>highlander run</c> is a child subreaper: a daemon that leaves its command's (or member's) process group and outlives
/// its parent (double fork, <c>setsid</c>) is re-parented to <c>highlander</c> and stopped before the lock is released.
/// The daemon journals its own start and SIGTERM (<see cref="GroupDirectory"/>).
/// </summary>
[Collection(CliServer.Name)]
public sealed class SubreaperTests(PostgresFixture pg) : IDisposable
{
    private static readonly string[] Timings = ["--lease", "6s", "--heartbeat", "500ms", "--stop-timeout", "3s", "--safety-margin", "500ms", "--restart-delay", "100ms"];

    private readonly GroupDirectory _group = new("a", "b");
    private readonly string _name = "reaper-" + Guid.NewGuid().ToString("N")[..8];
    private readonly List<CliProcess> _nodes = [];

    [Fact]
    public async Task A_daemonized_descendant_of_the_command_is_stopped_before_the_lock_is_released()
    {
        var node = Start(["--node-id", "n1", "--", "sh", "-c", "\"$GROUP_DIR/daemon.sh\"; exec sleep 300"]);
        var started = await _group.WaitAsync(e => e.Any(x => x is { Kind: "start", Member: "daemon" }), "the daemon started", node);
        var daemon = started.Single(e => e.Member == "daemon").Pid;
        // Its parent (a subshell) exited at once: it was re-parented to highlander, not to PID 1.
        for (var waited = 0; ParentOf(daemon) != node.Pid; waited++)
        {
            Assert.True(waited < 600, $"the daemon (pid {daemon}) has parent {ParentOf(daemon)}, not highlander (pid {node.Pid})");
            await Task.Delay(50);
        }

        node.Signal(Native.SigTerm);
        Assert.True(await node.WaitForExitAsync(TimeSpan.FromSeconds(30)) == ExitCodes.Ok, node.Output);
        Assert.Contains(_group.Events, e => e is { Kind: "stop", Member: "daemon" }); // it got SIGTERM from highlander
        Assert.False(Native.ProcessAlive(daemon), node.Output);
        var stderr = node.Stderr;
        var escaped = stderr.IndexOf($"[{HighlanderEventIds.EscapedStopping}]", StringComparison.Ordinal);
        Assert.True(escaped >= 0 && escaped < stderr.IndexOf($"[{HighlanderEventIds.Released}]", StringComparison.Ordinal), node.Output);
    }

    /// <summary>
    /// The leader's rehearsal (docs/cli.md, "Hand-over: the rehearsal") runs beside the command, and leaves the command's
    /// escaped processes alone: only the command's own stop may stop them.
    /// </summary>
    [Fact]
    public async Task A_leaders_rehearsal_leaves_the_commands_daemon_alone()
    {
        var node = Start(["--node-id", "n1", "--log-level", "debug", "--", "sh", "-c", "\"$GROUP_DIR/daemon.sh\"; exec sleep 300"]);
        var started = await _group.WaitAsync(e => e.Any(x => x is { Kind: "start", Member: "daemon" }), "the daemon started", node);
        var daemon = started.Single(e => e.Member == "daemon").Pid;
        await node.WaitLoggedAsync(HighlanderEventIds.Rehearsed);
        for (var waited = 0; ParentOf(daemon) != node.Pid; waited++)
        {
            Assert.True(waited < 600, $"the daemon (pid {daemon}) has parent {ParentOf(daemon)}, not highlander (pid {node.Pid})");
            await Task.Delay(50);
        }

        Assert.True(Native.ProcessAlive(daemon), node.Output);
        Assert.False(node.Logged(HighlanderEventIds.EscapedStopping), node.Output);
        Assert.DoesNotContain(_group.Events, e => e is { Kind: "stop", Member: "daemon" });
    }

    [Fact]
    public async Task A_members_daemon_is_stopped_after_the_member_and_before_the_members_before_it_and_before_the_next_leader_starts()
    {
        File.WriteAllText(_group.Procfile, "a: ./member.sh\nb: ./daemon.sh; exec ./member.sh\n");
        var first = Start(["--node-id", "n1", "--procfile", _group.Procfile]);
        await _group.WaitAsync(e => e.Count(x => x.Kind == "start" && x.Node == "n1") == 3, "n1's members and daemon started", first);
        var second = Start(["--node-id", "n2", "--procfile", _group.Procfile]);
        await second.WaitLoggedAsync(HighlanderEventIds.Following);

        first.Signal(Native.SigTerm);
        var events = await _group.WaitAsync(e => e.Count(x => x.Kind == "start" && x.Node == "n2") == 3, "n2's members and daemon started", second);
        Assert.True(await first.WaitForExitAsync(TimeSpan.FromSeconds(30)) == ExitCodes.Ok, first.Output);

        var firstOfSecond = events.ToList().FindIndex(e => e.Node == "n2");
        Assert.Equal(["b", "daemon", "a"], events.Take(firstOfSecond).Where(e => e.Kind == "stop").Select(e => e.Member));
        Assert.Contains("member b", first.LogLines(HighlanderEventIds.EscapedStopping).Single(), StringComparison.Ordinal);
    }

    private CliProcess Start(string[] args)
    {
        var cli = CliProcess.Start(["run", "--name", _name, .. Timings, .. args], _group.Environment(pg.ConnectionString));
        _nodes.Add(cli);
        return cli;
    }

    private static int ParentOf(int pid)
    {
        var stat = File.ReadAllText($"/proc/{pid}/stat");
        return int.Parse(stat[(stat.LastIndexOf(')') + 2)..].Split(' ')[1], System.Globalization.CultureInfo.InvariantCulture);
    }

    public void Dispose()
    {
        foreach (var node in _nodes)
        {
            node.DisposeAsync().AsTask().GetAwaiter().GetResult();
        }

        _group.Dispose();
    }
}
