using HighlanderPG.Cli.Processes;
using HighlanderPG.Cli.Tests.Infrastructure;
using HighlanderPG.Diagnostics;

namespace HighlanderPG.Cli.Tests;

/// <summary><c>highlander stepdown</c>, <c>drain</c> and <c>undrain</c> against two <c>highlander run</c> nodes.</summary>
[Collection(CliServer.Name)]
public sealed class ControlCommandTests(PostgresFixture pg) : IDisposable
{
    private readonly JournalDirectory _life = new();
    private readonly string _name = "control-" + Guid.NewGuid().ToString("N")[..8];
    private readonly string _a = "ctl-a-" + Guid.NewGuid().ToString("N")[..6];
    private readonly string _b = "ctl-b-" + Guid.NewGuid().ToString("N")[..6];

    [Fact]
    public async Task Stepdown_drain_and_undrain_move_the_command_and_say_where()
    {
        var env = JournalEnvironment.For(_life, pg.ConnectionString);
        await using var nodes = await StartLeaderAndFollowerAsync(env);

        // stepdown: a stops its command before b starts it; the output says where it went.
        var mark = _life.Journal.Mark();
        var (code, cli) = await CliProcess.RunAsync(["stepdown", _name, "--hold-off", "5m", "--timeout", "60s"], env);
        Assert.True(code == 0, cli.Output);
        Assert.Contains($"{_name}: {_a} steps down", cli.Stdout);
        Assert.Contains($"{_name}: {_a} -> {_b}", cli.Stdout);
        var stopped = await _life.Journal.WaitStoppedAsync(_name, _a, mark);
        var started = await _life.Journal.WaitStartedAsync(_name, mark, node: _b);
        Assert.True(stopped.Seq < started.Seq, _life.Journal.Describe());

        // a is held off for 5 minutes: undrain ends it, then draining b moves it back to a.
        (code, cli) = await CliProcess.RunAsync(["undrain", "--node", _a], env);
        Assert.True(code == 0, cli.Output);
        Assert.Contains($"{_a}: 1 hold-off(s) ended", cli.Stdout);
        mark = _life.Journal.Mark();
        (code, cli) = await CliProcess.RunAsync(["drain", "--node", _b, "--hold-off", "10m"], env);
        Assert.True(code == 0, cli.Output);
        Assert.Contains($"{_b} is drained until", cli.Stdout);
        Assert.Contains($": {_b} -> {_a}", cli.Stdout); // named when the fencing table knows it (these nodes run without fencing)
        await _life.Journal.WaitStartedAsync(_name, mark, node: _a);

        (code, cli) = await CliProcess.RunAsync(["undrain", "--node", _b], env);
        Assert.True(code == 0, cli.Output);
        (code, cli) = await CliProcess.RunAsync(["undrain", "--node", _b], env);
        Assert.True(code == 0, cli.Output);
        Assert.Contains("nothing to end", cli.Stdout);
        _life.Journal.AssertNoOverlap();
    }

    [Fact]
    public async Task A_drain_that_leaves_only_held_off_nodes_warns_that_the_singleton_runs_nowhere_until_then()
    {
        var env = JournalEnvironment.For(_life, pg.ConnectionString);
        await using var nodes = await StartLeaderAndFollowerAsync(env);
        var mark = _life.Journal.Mark();
        var (code, cli) = await CliProcess.RunAsync(["stepdown", _name, "--hold-off", "5m", "--timeout", "60s"], env);
        Assert.True(code == 0, cli.Output);
        await _life.Journal.WaitStartedAsync(_name, mark, node: _b);

        // a is held off from it for 5 minutes, and b is drained: the one other node cannot take it.
        (code, cli) = await CliProcess.RunAsync(["drain", "--node", _b, "--hold-off", "1m", "--no-wait"], env);
        Assert.True(code == 0, cli.Output);
        Assert.Contains("warning: every other node is held off from ", cli.Stderr);
        Assert.Contains($"({_a} until ", cli.Stderr);

        (code, cli) = await CliProcess.RunAsync(["undrain", "--node", _a], env);
        Assert.True(code == 0, cli.Output);
        (code, cli) = await CliProcess.RunAsync(["undrain", "--node", _b], env);
        Assert.True(code == 0, cli.Output);
        _life.Journal.AssertNoOverlap();
    }

    [Fact]
    public async Task A_stepdown_interrupted_while_it_waits_exits_5_and_its_request_stands()
    {
        var env = JournalEnvironment.For(_life, pg.ConnectionString);
        await using var nodes = await StartLeaderAndFollowerAsync(env);
        var (code, cli) = await CliProcess.RunAsync(["drain", "--node", _b, "--hold-off", "5m", "--no-wait"], env);
        Assert.True(code == 0, cli.Output);

        // b is drained: the stepdown warns that nothing can take it, and waits (up to --timeout) until Ctrl+C.
        var mark = _life.Journal.Mark();
        await using var stepdown = CliProcess.Start(["stepdown", _name, "--hold-off", "5m", "--timeout", "5m"], env);
        await stepdown.WaitForStderrAsync("warning: every other node is held off from ");
        await _life.Journal.WaitStoppedAsync(_name, _a, mark);
        Assert.False(stepdown.HasExited, stepdown.Output);
        stepdown.Signal(Native.SigInt);
        code = await stepdown.WaitForExitAsync(TimeSpan.FromSeconds(30));
        Assert.True(code == ExitCodes.Interrupted, stepdown.Output);
        Assert.Contains("highlander stepdown: interrupted.", stepdown.Stderr);

        // The request stands: a is still held off from it, so undrain ends that hold-off and a takes it back.
        (code, cli) = await CliProcess.RunAsync(["undrain", "--node", _a], env);
        Assert.True(code == 0, cli.Output);
        Assert.Contains($"{_a}: 1 hold-off(s) ended", cli.Stdout);
        await _life.Journal.WaitStartedAsync(_name, mark, node: _a);
        (code, cli) = await CliProcess.RunAsync(["undrain", "--node", _b], env);
        Assert.True(code == 0, cli.Output);
        _life.Journal.AssertNoOverlap();
    }

    [Fact]
    public async Task Bad_requests_exit_2_with_what_to_fix_and_do_nothing()
    {
        var env = JournalEnvironment.For(_life, pg.ConnectionString);
        await using var a = CliProcess.Start(["run", "--name", _name, "--node-id", _a, .. RunTests.Timings, "--", .. _life.ScriptCommand], env);
        await _life.Journal.WaitStartedAsync(_name, node: _a);

        var (code, cli) = await CliProcess.RunAsync(["stepdown", _name + "-nobody"], env);
        Assert.True(code == ExitCodes.Usage, cli.Output);
        Assert.Contains("nobody leads", cli.Stderr);

        (code, cli) = await CliProcess.RunAsync(["stepdown", _name, "--node", _b], env);
        Assert.True(code == ExitCodes.Usage, cli.Output);
        Assert.Contains($"node \"{_a}\" does", cli.Stderr);

        (code, cli) = await CliProcess.RunAsync(["drain", "--node", _a + "-typo"], env);
        Assert.True(code == ExitCodes.Usage, cli.Output);
        Assert.Contains("no live node", cli.Stderr);

        (code, cli) = await CliProcess.RunAsync(["drain", "--node", _a, "--hold-off", "-1m"], env);
        Assert.True(code == ExitCodes.Usage, cli.Output);
        (code, cli) = await CliProcess.RunAsync(["drain"], env);
        Assert.True(code == ExitCodes.Usage, cli.Output);
        Assert.Contains("--node", cli.Stderr);
        (code, cli) = await CliProcess.RunAsync(["stepdown", " "], env);
        Assert.True(code == ExitCodes.Usage, cli.Output);

        // Alone, a drained node's command runs nowhere: the CLI warns, and undrain brings it back.
        var mark = _life.Journal.Mark();
        (code, cli) = await CliProcess.RunAsync(["drain", "--node", _a, "--hold-off", "10m"], env);
        Assert.True(code == 0, cli.Output);
        Assert.Contains("no other node is connected", cli.Stderr);
        await _life.Journal.WaitStoppedAsync(_name, _a, mark);
        (code, cli) = await CliProcess.RunAsync(["undrain", "--node", _a], env);
        Assert.True(code == 0, cli.Output);
        await _life.Journal.WaitStartedAsync(_name, mark, node: _a);
    }

    /// <summary>Node a runs the command, node b follows it; both are stopped when the result is disposed.</summary>
    private async Task<Processes> StartLeaderAndFollowerAsync(IReadOnlyDictionary<string, string> env)
    {
        var nodes = new Processes();
        try
        {
            nodes.Add(CliProcess.Start(["run", "--name", _name, "--node-id", _a, .. RunTests.Timings, "--", .. _life.ScriptCommand], env));
            await _life.Journal.WaitStartedAsync(_name, node: _a);
            var b = nodes.Add(CliProcess.Start(["run", "--name", _name, "--node-id", _b, .. RunTests.Timings, "--", .. _life.ScriptCommand], env));
            await b.WaitLoggedAsync(HighlanderEventIds.Following);
            return nodes;
        }
        catch
        {
            await nodes.DisposeAsync();
            throw;
        }
    }

    private sealed class Processes : IAsyncDisposable
    {
        private readonly List<CliProcess> _all = [];

        public CliProcess Add(CliProcess process)
        {
            _all.Add(process);
            return process;
        }

        public async ValueTask DisposeAsync()
        {
            foreach (var process in Enumerable.Reverse(_all))
            {
                await process.DisposeAsync();
            }
        }
    }

    public void Dispose() => _life.Dispose();
}
