using HighlanderPG.Diagnostics;
using HighlanderPG.Cli.Processes;
using HighlanderPG.Cli.Tests.Infrastructure;
using HighlanderPG.Testing;
using Npgsql;

namespace HighlanderPG.Cli.Tests;

/// <summary><c>highlander run</c> in service mode: real nodes as processes, real faults, the child's life in a file.</summary>
[Collection(CliServer.Name)]
public sealed class RunTests(PostgresFixture pg) : IDisposable
{
    private readonly LifeFile _life = new();
    private readonly string _name = "job-" + Guid.NewGuid().ToString("N")[..8];

    /// <summary>Test timings (those of the library's own tests): a cut-off leader is replaced within about 3 s.</summary>
    public static readonly string[] Timings = ["--lease", "3s", "--heartbeat", "500ms", "--stop-timeout", "1s", "--safety-margin", "500ms", "--restart-delay", "200ms"];

    [Fact]
    public async Task Leader_SIGTERM_stops_its_child_then_hands_over_and_exits_0()
    {
        await using var a = StartNode("a");
        var first = await _life.WaitStartedAsync("a");
        await using var b = StartNode("b");
        await b.WaitForStderrAsync("is led by a");

        a.Signal(Native.SigTerm);
        Assert.Equal(0, await a.WaitForExitAsync(TimeSpan.FromSeconds(15)));
        var stopped = await _life.WaitAsync(l => l.Kind == "stop" && l.Node == "a", what: "a's child to stop");
        var next = await _life.WaitStartedAsync("b", after: first.Index);
        Assert.True(stopped.Index < next.Index, "the old child must stop before the new one starts:\n" + _life.Describe());
        Assert.True(a.Stderr.Contains("Released singleton", StringComparison.Ordinal), a.Output);
        _life.AssertNoOverlap();
    }

    [Fact]
    public async Task Leader_SIGKILL_takes_its_child_and_grandchild_down_and_another_node_takes_over()
    {
        await using var a = StartNode("a");
        var first = await _life.WaitStartedAsync("a");
        var grandchild = await _life.WaitAsync(l => l.Kind == "grandchild" && l.Node == "a");
        await using var b = StartNode("b");
        await b.WaitForStderrAsync("is led by a");

        a.Signal(Native.SigKill);
        // The parent-death signal kills the command; the watchdog kills what the command started.
        await ProcessWatch.AssertGoneAsync(first.Pid, "a's child");
        await ProcessWatch.AssertGoneAsync(grandchild.Pid, "a's child's own child");
        await _life.WaitStartedAsync("b", after: first.Index);
        _life.AssertNoOverlap(); // the kernel lock: a's child was dead when b's started
    }

    [Fact]
    public async Task Cut_off_leader_stops_its_child_before_another_node_starts()
    {
        var server = new NpgsqlConnectionStringBuilder(pg.ConnectionString);
        await using var proxy = FaultProxy.Start(server.Host!, server.Port);
        await using var a = StartNode("a", proxy.ConnectionString(pg.ConnectionString));
        var first = await _life.WaitStartedAsync("a");
        await using var b = StartNode("b");
        await b.WaitForStderrAsync("is led by a");

        proxy.SetMode(ProxyMode.Blackhole);
        var stopped = await _life.WaitAsync(l => l.Kind == "stop" && l.Node == "a", what: "the cut-off leader's child to stop");
        var next = await _life.WaitStartedAsync("b", after: first.Index);
        Assert.True(stopped.Index < next.Index, "the cut-off leader's child must stop before another starts:\n" + _life.Describe());
        _life.AssertNoOverlap();
        Assert.True(a.Stderr.Contains($"[{HighlanderEventIds.LeaseExpiring}]", StringComparison.Ordinal), a.Output); // lease about to expire: stopping children
        proxy.SetMode(ProxyMode.Pass); // healed: a reconnects as a follower (and stops promptly at the end of the test)
    }

    [Fact]
    public async Task A_command_ignoring_SIGTERM_is_SIGKILLed_at_its_stop_timeout_before_the_lock_is_released()
    {
        await using var a = CliProcess.Start(["run", "--name", _name, "--node-id", "a", .. Timings, "--", .. _life.StubbornCommand], _life.Environment(pg.ConnectionString));
        var first = await _life.WaitStartedAsync("a");
        await using var b = StartNode("b");
        await b.WaitForStderrAsync("is led by a");

        a.Signal(Native.SigTerm);
        Assert.Equal(0, await a.WaitForExitAsync(TimeSpan.FromSeconds(15)));
        await ProcessWatch.AssertGoneAsync(first.Pid, "a's stubborn child");
        await _life.WaitStartedAsync("b", after: first.Index);
        _life.AssertNoOverlap();
        Assert.True(a.Stderr.Contains("[2003]", StringComparison.Ordinal), a.Output); // did not stop within the stop timeout of SIGTERM: SIGKILL
        Assert.True(a.Stderr.Contains("exited with code 137", StringComparison.Ordinal), a.Output);
        Assert.False(a.Stderr.Contains($"[{HighlanderEventIds.Escalating}]", StringComparison.Ordinal), a.Output); // killed within its budget: no escalation
    }

    [Fact]
    public async Task A_failing_command_is_restarted_and_a_crash_loop_ends_highlander_with_exit_code_1()
    {
        var (code, cli) = await CliProcess.RunAsync(
            ["run", "--name", _name, "--node-id", "loop", .. Timings[..8], "--max-restarts", "2", "--restart-window", "1m", "--restart-delay", "100ms",
             "--", "sh", "-c", "echo \"start $HIGHLANDER_NODE $$\" >> \"$LIFE\"; exit 3"],
            _life.Environment(pg.ConnectionString));

        Assert.True(code == ExitCodes.Failure, cli.Output);
        Assert.True(cli.Stderr.Contains("crash-looped", StringComparison.Ordinal), cli.Output);
        Assert.True(cli.Stderr.Contains("exited with code 3", StringComparison.Ordinal), cli.Output);
        Assert.Equal(3, _life.Lines().Count(l => l.Kind == "start")); // the first run and the 2 restarts allowed
    }

    [Fact]
    public async Task The_command_gets_its_name_node_and_fencing_token_and_inherits_stdout()
    {
        await using var a = CliProcess.Start(
            ["run", "--name", _name, "--node-id", "envnode", "--fencing", .. Timings, "--", "sh", "-c", "echo \"name=$HIGHLANDER_NAME node=$HIGHLANDER_NODE token=$HIGHLANDER_FENCING_TOKEN\"; exec sleep 300"],
            _life.Environment(pg.ConnectionString));
        await a.WaitForStderrAsync("Started sh");
        await a.WaitForStdoutAsync("name=");
        Assert.Matches($"name={_name} node=envnode token=[1-9][0-9]*", a.Stdout);
    }

    private CliProcess StartNode(string node, string? connectionString = null) =>
        CliProcess.Start(["run", "--name", _name, "--node-id", node, .. Timings, "--", .. _life.Command], _life.Environment(connectionString ?? pg.ConnectionString));

    public void Dispose() => _life.Dispose();
}
