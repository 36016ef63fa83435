using System.Globalization;
using System.Text.RegularExpressions;
using HighlanderPG.Diagnostics;
using HighlanderPG.Cli.Processes;
using HighlanderPG.Cli.Tests.Infrastructure;
using HighlanderPG.Testing.Journal;

namespace HighlanderPG.Cli.Tests;

/// <summary>
/// <c>highlander run</c> in service mode, what only the CLI has: a command that ignores SIGTERM, a crash-looping command,
/// the command's environment. The fault scenarios every kind of node shares (SIGTERM, SIGKILL, cut-off) are in
/// <see cref="CliNodeScenarios"/>.
/// </summary>
[Collection(CliServer.Name)]
public sealed class RunTests(PostgresFixture pg) : IDisposable
{
    private readonly JournalDirectory _life = new();
    private readonly string _name = "job-" + Guid.NewGuid().ToString("N")[..8];

    /// <summary>Test timings (those of the library's own tests): a cut-off leader is replaced within about 3 s.</summary>
    public static readonly string[] Timings = ["--lease", "3s", "--heartbeat", "500ms", "--stop-timeout", "1s", "--safety-margin", "500ms", "--restart-delay", "200ms"];

    [Fact]
    public async Task A_command_ignoring_SIGTERM_is_SIGKILLed_at_its_stop_timeout_before_the_lock_is_released()
    {
        await using var a = CliProcess.Start(["run", "--name", _name, "--node-id", "a", .. Timings, "--", .. _life.ScriptCommand], JournalEnvironment.For(_life, pg.ConnectionString, stubborn: true));
        var first = await _life.Journal.WaitStartedAsync(_name, node: "a");
        Assert.Equal("stubborn", first.Detail);
        await using var b = StartNode("b");
        await b.WaitLoggedAsync(HighlanderEventIds.Following); // led by a, the only other node

        a.Signal(Native.SigTerm);
        Assert.Equal(0, await a.WaitForExitAsync(TimeSpan.FromSeconds(15)));
        await ProcessWatch.AssertGoneAsync(first.Pid, "a's stubborn child");
        await _life.Journal.WaitStartedAsync(_name, after: first.Seq + 1, node: "b");
        _life.Journal.AssertNoOverlap();
        Assert.True(a.Logged(HighlanderEventIds.CommandKilled), a.Output); // did not stop within the stop timeout of SIGTERM: SIGKILL
        Assert.True(a.LoggedCommandExit(137), a.Output); // 128 + SIGKILL

        // The SIGKILL comes from the command's own stop budget (ChildKillAfter, shortly before --stop-timeout ends), not
        // from an escalation. On a starved machine the kill can be reaped only after the budget ended, and the library
        // then escalates too (the CLI's handler kills the group again, harmlessly): order is asserted, not speed.
        var stderr = a.Stderr;
        var killed = stderr.IndexOf($"[{HighlanderEventIds.CommandKilled}]", StringComparison.Ordinal);
        var escalated = stderr.IndexOf($"[{HighlanderEventIds.Escalating}]", StringComparison.Ordinal);
        Assert.True(escalated < 0 || killed < escalated, a.Output);
    }

    [Fact]
    public async Task A_failing_command_is_restarted_and_a_crash_loop_ends_highlander_with_exit_code_1()
    {
        var (code, cli) = await CliProcess.RunAsync(
            ["run", "--name", _name, "--node-id", "loop", .. Timings[..8], "--max-restarts", "2", "--restart-window", "1m", "--restart-delay", "100ms",
             "--", "sh", "-c", JournalEnvironment.StartLine + "; exit 3"],
            JournalEnvironment.For(_life, pg.ConnectionString));

        Assert.True(code == ExitCodes.Failure, cli.Output);
        Assert.True(cli.Logged(HighlanderEventIds.CrashLoop), cli.Output);
        Assert.True(cli.LoggedCommandExit(3), cli.Output);
        _life.Journal.Poll();
        Assert.Equal(3, _life.Journal.Events.Count(l => l.Kind == LifeKind.Started)); // the first run and the 2 restarts allowed
    }

    [Fact]
    public async Task A_command_that_keeps_exiting_0_under_restart_always_ends_in_a_crash_loop_that_says_so()
    {
        var (code, cli) = await CliProcess.RunAsync(
            ["run", "--name", _name, "--node-id", "quits", .. Timings[..8], "--max-restarts", "1", "--restart-window", "1m", "--restart-delay", "100ms", "--", "true"],
            JournalEnvironment.For(_life, pg.ConnectionString));

        Assert.True(code == ExitCodes.Failure, cli.Output);
        Assert.True(cli.Stderr.Contains("crash-looped (it kept exiting by itself with code 0, and --restart always restarts it each time", StringComparison.Ordinal), cli.Output);
    }

    [Fact]
    public async Task The_command_gets_its_name_node_and_fencing_token_and_inherits_stdout()
    {
        await using var a = CliProcess.Start(
            ["run", "--name", _name, "--node-id", "envnode", "--fencing", .. Timings, "--", "sh", "-c", "echo \"name=$HIGHLANDER_NAME node=$HIGHLANDER_NODE token=$HIGHLANDER_FENCING_TOKEN\"; exec sleep 300"],
            JournalEnvironment.For(_life, pg.ConnectionString));
        await a.WaitLoggedAsync(HighlanderEventIds.CommandStarted);
        await a.WaitForStdoutAsync("name=");
        Assert.Matches($"name={_name} node=envnode token=[1-9][0-9]*", a.Stdout);
    }

    /// <summary>
    /// <c>highlander run</c> rehearses its hand-over (docs/cli.md, "Hand-over: the rehearsal") whether it leads or follows,
    /// on a private lock and with <c>sh -c :</c> as the child: the command runs once, on the leader, and not for the
    /// rehearsals. The real hand-over then goes as ever.
    /// </summary>
    [Fact]
    public async Task A_run_rehearses_its_hand_over_without_running_the_command_whether_it_leads_or_follows()
    {
        await using var a = CliProcess.Start(["run", "--name", _name, "--node-id", "reh-a", "--log-level", "debug", .. Timings, "--", .. _life.ScriptCommand], JournalEnvironment.For(_life, pg.ConnectionString));
        var first = await _life.Journal.WaitStartedAsync(_name, node: "reh-a");
        await a.WaitLoggedAsync(HighlanderEventIds.Rehearsed);
        await using var b = CliProcess.Start(["run", "--name", _name, "--node-id", "reh-b", "--log-level", "debug", .. Timings, "--", .. _life.ScriptCommand], JournalEnvironment.For(_life, pg.ConnectionString));
        await b.WaitLoggedAsync(HighlanderEventIds.Rehearsed);
        Assert.Contains("(ran: True)", a.Stderr, StringComparison.Ordinal);
        Assert.Contains("(ran: True)", b.Stderr, StringComparison.Ordinal);
        _life.Journal.Poll();
        Assert.Single(_life.Journal.Events, e => e.Kind == LifeKind.Started); // the leader's command, once
        Assert.DoesNotContain(_life.Journal.Events, e => e.Node == "reh-b");

        a.Signal(Native.SigTerm);
        Assert.Equal(0, await a.WaitForExitAsync(TimeSpan.FromSeconds(15)));
        await _life.Journal.WaitStartedAsync(_name, after: first.Seq + 1, node: "reh-b");
        _life.Journal.AssertNoOverlap();
        Assert.False(a.Logged(HighlanderEventIds.RunRehearsalFailed), a.Output);
        Assert.False(b.Logged(HighlanderEventIds.RunRehearsalFailed), b.Output);
    }

    /// <summary>
    /// Ctrl+C (SIGINT) and SIGQUIT stop a run as gracefully as SIGTERM (highlander handles the three itself, docs/cli.md):
    /// the command stopped and gone before the name is released, exit 0, and the follower takes over.
    /// </summary>
    [Theory]
    [InlineData(2)]
    [InlineData(3)]
    public async Task SIGINT_and_SIGQUIT_step_down_as_gracefully_as_SIGTERM(int signal)
    {
        await using var a = CliProcess.Start(["run", "--name", _name, "--node-id", $"sig{signal}-a", "--log-level", "debug", .. Timings, "--", .. _life.ScriptCommand], JournalEnvironment.For(_life, pg.ConnectionString));
        var first = await _life.Journal.WaitStartedAsync(_name, node: $"sig{signal}-a");
        await using var b = StartNode($"sig{signal}-b");

        a.Signal(signal);
        Assert.Equal(0, await a.WaitForExitAsync(TimeSpan.FromSeconds(15)));
        var stderr = a.Stderr;
        var exited = stderr.IndexOf($"[{HighlanderEventIds.CommandExited}]", StringComparison.Ordinal);
        var released = stderr.IndexOf($"[{HighlanderEventIds.Released}]", StringComparison.Ordinal);
        Assert.True(exited >= 0 && released > exited, a.Output);
        await _life.Journal.WaitStartedAsync(_name, after: first.Seq + 1, node: $"sig{signal}-b");
        _life.Journal.AssertNoOverlap();
    }

    /// <summary>
    /// The stop signals are <c>highlander</c>'s own from before its host starts (it has no console lifetime: docs/cli.md,
    /// "Hand-over: where the time goes"): a SIGTERM at any moment of the start, before the node has started (the host's
    /// stop stops it), while it starts, or once its command runs, ends it with exit 0 and leaves nothing of the command
    /// running, and the next node gets the name. Only a signal before the runtime has any handler at all ends it as the
    /// signal does (143): then nothing of it has started.
    /// </summary>
    [Theory]
    [InlineData("spawned")]
    [InlineData("node starting")]
    [InlineData("contending")]
    [InlineData("command running")]
    public async Task A_SIGTERM_at_any_moment_of_the_start_ends_highlander_cleanly(string moment)
    {
        var node = "early-" + moment.Replace(' ', '-');
        await using var a = CliProcess.Start(["run", "--name", _name, "--node-id", node, "--log-level", "debug", .. Timings, "--", .. _life.ScriptCommand], JournalEnvironment.For(_life, pg.ConnectionString));
        switch (moment)
        {
            case "node starting":
                await a.WaitLoggedAsync(HighlanderEventIds.NodeStarting);
                break;
            case "contending":
                await a.WaitLoggedAsync(HighlanderEventIds.RunContending);
                break;
            case "command running":
                await _life.Journal.WaitStartedAsync(_name, node: node);
                break;
        }

        a.Signal(Native.SigTerm);
        var code = await a.WaitForExitAsync(TimeSpan.FromSeconds(15));
        Assert.True(code == 0 || (moment == "spawned" && code == 128 + Native.SigTerm && !a.Logged(HighlanderEventIds.NodeStarting)), $"exit {code}\n{a.Output}");

        _life.Journal.Poll();
        foreach (var started in _life.Journal.Events.Where(e => e.Node == node && e.Kind == LifeKind.Started))
        {
            await ProcessWatch.AssertGoneAsync(started.Pid, $"{node}'s command");
        }

        await using var b = StartNode("after-" + node);
        await _life.Journal.WaitStartedAsync(_name, node: "after-" + node);
        _life.Journal.AssertNoOverlap();
    }

    /// <summary>
    /// A leader stepping down lowers its own CPU priority for the rest of its shutdown (docs/cli.md, "Hand-over: where the
    /// time goes"): only once its command has exited and the release is written to the server (the stop itself runs at
    /// full priority), and before the server's answer is read (what it runs from then on competes with the node taking over).
    /// </summary>
    [Fact]
    public async Task A_leader_stepping_down_lowers_its_priority_once_its_release_is_sent_before_reading_the_answer()
    {
        await using var a = CliProcess.Start(["run", "--name", _name, "--node-id", "yield-a", "--log-level", "debug", .. Timings, "--", .. _life.ScriptCommand], JournalEnvironment.For(_life, pg.ConnectionString));
        await _life.Journal.WaitStartedAsync(_name, node: "yield-a");
        a.Signal(Native.SigTerm);
        Assert.Equal(0, await a.WaitForExitAsync(TimeSpan.FromSeconds(15)));

        var stderr = a.Stderr;
        var exited = stderr.IndexOf($"[{HighlanderEventIds.CommandExited}]", StringComparison.Ordinal);
        var released = stderr.IndexOf($"[{HighlanderEventIds.Released}]", StringComparison.Ordinal);
        var yielded = stderr.IndexOf($"[{HighlanderEventIds.RunYielded}]", StringComparison.Ordinal);
        Assert.True(exited >= 0 && yielded > exited && released > yielded, a.Output);
        var threads = Regex.Match(stderr[yielded..], @"nice 19, (\d+) threads");
        Assert.True(threads.Success && int.Parse(threads.Groups[1].Value, CultureInfo.InvariantCulture) > 0, a.Output);
    }

    /// <summary>
    /// A run keeps the runtime's background compiler at the lowest CPU priority (docs/cli.md, "Hand-over: where the time
    /// goes"): its thread, which a new process has for a while (recompiling what runs often), is seen at nice 19 under
    /// <c>SCHED_IDLE</c>.
    /// </summary>
    [Fact]
    public async Task A_runs_background_compiler_thread_is_kept_at_the_lowest_priority()
    {
        await using var a = CliProcess.Start(["run", "--name", _name, "--node-id", "tier-a", .. Timings, "--", .. _life.ScriptCommand], JournalEnvironment.For(_life, pg.ConnectionString));
        await _life.Journal.WaitStartedAsync(_name, node: "tier-a");
        var seen = new List<string>();
        var until = DateTime.UtcNow + TimeSpan.FromSeconds(30);
        while (DateTime.UtcNow < until)
        {
            foreach (var task in Directory.EnumerateDirectories($"/proc/{a.Pid}/task"))
            {
                try
                {
                    if (!File.ReadAllText(Path.Combine(task, "comm")).StartsWith(Native.RuntimeCompilerThreadName, StringComparison.Ordinal))
                    {
                        continue;
                    }

                    var stat = File.ReadAllText(Path.Combine(task, "stat"));
                    var fields = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
                    var (nice, policy) = (int.Parse(fields[16], CultureInfo.InvariantCulture), int.Parse(fields[38], CultureInfo.InvariantCulture));
                    if ((nice, policy) == (19, 5))
                    {
                        return; // nice 19, SCHED_IDLE
                    }

                    seen.Add($"{Path.GetFileName(task)}: nice {nice}, policy {policy}");
                }
                catch (IOException)
                {
                    // the thread ended meanwhile
                }
            }

            await Task.Delay(50);
        }

        Assert.Fail($"no compiler thread of highlander at nice 19 under SCHED_IDLE within 30 s (seen: {string.Join(", ", seen.Distinct())})\n{a.Output}");
    }

    /// <summary>
    /// A run keeps its next run of the command started ahead (docs/cli.md, "Hand-over: where the time goes"): a <c>sh</c>
    /// of its own, waiting on a FIFO, that becomes the command at the take-over (the same pid) with that acquisition's
    /// fencing token. Nothing of the command runs before.
    /// </summary>
    [Fact]
    public async Task A_followers_next_run_is_started_ahead_and_becomes_the_command_at_the_take_over_with_its_own_token()
    {
        string[] command = ["sh", "-c", JournalEnvironment.StartLine + "; echo \"pid=$$ token=$HIGHLANDER_FENCING_TOKEN\"; exec sleep 300"];
        await using var a = CliProcess.Start(["run", "--name", _name, "--node-id", "pre-a", "--fencing", .. Timings, "--", .. command], JournalEnvironment.For(_life, pg.ConnectionString));
        var first = await _life.Journal.WaitStartedAsync(_name, node: "pre-a");
        await a.WaitForStdoutAsync("token=");
        var firstToken = long.Parse(Regex.Match(a.Stdout, @"token=(\d+)").Groups[1].Value, CultureInfo.InvariantCulture);

        await using var b = CliProcess.Start(["run", "--name", _name, "--node-id", "pre-b", "--fencing", "--log-level", "debug", .. Timings, "--", .. command], JournalEnvironment.For(_life, pg.ConnectionString));
        await b.WaitLoggedAsync(HighlanderEventIds.Rehearsed);
        var prepared = await WaitForPreparedAsync(b);
        _life.Journal.Poll();
        Assert.DoesNotContain(_life.Journal.Events, e => e.Node == "pre-b"); // waiting, not running the command

        a.Signal(Native.SigTerm);
        Assert.Equal(0, await a.WaitForExitAsync(TimeSpan.FromSeconds(15)));
        Assert.True(a.LoggedCommandExit(143), a.Output); // its command stopped by SIGTERM before it released the name
        await _life.Journal.WaitStartedAsync(_name, after: first.Seq + 1, node: "pre-b");
        await b.WaitForStdoutAsync("token=");
        var run = Regex.Match(b.Stdout, @"pid=(\d+) token=(\d+)");
        Assert.True(run.Success, b.Output);
        Assert.Equal(prepared, int.Parse(run.Groups[1].Value, CultureInfo.InvariantCulture));
        Assert.True(long.Parse(run.Groups[2].Value, CultureInfo.InvariantCulture) > firstToken, b.Output);
    }

    /// <summary>
    /// A process prepared ahead that is gone when it is needed (someone killed it) costs nothing but time: COMMAND is
    /// started the ordinary way, with that acquisition's token.
    /// </summary>
    [Fact]
    public async Task When_the_process_started_ahead_was_killed_the_command_is_started_the_ordinary_way()
    {
        string[] command = ["sh", "-c", JournalEnvironment.StartLine + "; echo \"pid=$$ token=$HIGHLANDER_FENCING_TOKEN\"; exec sleep 300"];
        await using var a = CliProcess.Start(["run", "--name", _name, "--node-id", "kpre-a", "--fencing", .. Timings, "--", .. command], JournalEnvironment.For(_life, pg.ConnectionString));
        var first = await _life.Journal.WaitStartedAsync(_name, node: "kpre-a");
        await using var b = CliProcess.Start(["run", "--name", _name, "--node-id", "kpre-b", "--fencing", "--log-level", "debug", .. Timings, "--", .. command], JournalEnvironment.For(_life, pg.ConnectionString));
        await b.WaitLoggedAsync(HighlanderEventIds.Rehearsed);
        var prepared = await WaitForPreparedAsync(b);
        Native.SignalProcess(prepared, Native.SigKill);
        await ProcessWatch.AssertGoneAsync(prepared, "the process started ahead");

        a.Signal(Native.SigTerm);
        Assert.Equal(0, await a.WaitForExitAsync(TimeSpan.FromSeconds(15)));
        await _life.Journal.WaitStartedAsync(_name, after: first.Seq + 1, node: "kpre-b");
        await b.WaitForStdoutAsync("token=");
        var run = Regex.Match(b.Stdout, @"pid=(\d+) token=(\d+)");
        Assert.True(run.Success, b.Output);
        Assert.NotEqual(prepared, int.Parse(run.Groups[1].Value, CultureInfo.InvariantCulture));
        Assert.True(b.Logged(HighlanderEventIds.CommandStarted), b.Output);
    }

    /// <summary>The pid of <paramref name="cli"/>'s process prepared ahead (a child waiting on its FIFO).</summary>
    private static async Task<int> WaitForPreparedAsync(CliProcess cli)
    {
        var watch = System.Diagnostics.Stopwatch.StartNew();
        while (true)
        {
            foreach (var pid in Native.ChildrenOf(cli.Pid, _ => true))
            {
                try
                {
                    // The command's, not one of the rehearsal's (sleep 3600, started ahead the same way).
                    if (File.ReadAllText($"/proc/{pid}/cmdline") is var cmdline && cmdline.Contains("read -r token", StringComparison.Ordinal) && cmdline.Contains("pid=$$", StringComparison.Ordinal))
                    {
                        return pid;
                    }
                }
                catch (IOException)
                {
                    // gone meanwhile
                }
            }

            Assert.True(watch.Elapsed < TimeSpan.FromSeconds(20), "no process prepared ahead\n" + cli.Output);
            await Task.Delay(50);
        }
    }

    private CliProcess StartNode(string node) =>
        CliProcess.Start(["run", "--name", _name, "--node-id", node, .. Timings, "--", .. _life.ScriptCommand], JournalEnvironment.For(_life, pg.ConnectionString));

    public void Dispose() => _life.Dispose();
}
