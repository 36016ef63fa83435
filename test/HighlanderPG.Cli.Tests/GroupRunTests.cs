using HighlanderPG.Cli.Processes;
using HighlanderPG.Cli.Tests.Infrastructure;
using HighlanderPG.Diagnostics;

namespace HighlanderPG.Cli.Tests;

/// <summary>
/// <c>highlander run --procfile</c>: a group of members under one name, against a real PostgreSQL. The members record
/// their own starts, stops and exits (<see cref="GroupDirectory"/>); the tests assert that order, never timing.
/// </summary>
[Collection(CliServer.Name)]
public sealed class GroupRunTests(PostgresFixture pg) : IDisposable
{
    /// <summary>
    /// Test timings: a stop budget (3 s, so a kill point 2.75 s after the stop request) the members' SIGTERM handlers meet
    /// even on a loaded machine, inside a 6 s lease; restarts 100 ms apart.
    /// </summary>
    private static readonly string[] Timings = ["--lease", "6s", "--heartbeat", "500ms", "--stop-timeout", "3s", "--safety-margin", "500ms", "--restart-delay", "100ms"];

    private readonly GroupDirectory _group = new("a", "b", "c");
    private readonly string _name = "group-" + Guid.NewGuid().ToString("N")[..8];
    private readonly List<CliProcess> _nodes = [];

    [Fact]
    public async Task Members_start_in_file_order_and_stop_in_reverse_order_each_gone_before_the_next()
    {
        var a = StartNode("n1");
        var started = await _group.WaitAsync(e => Starts(e).Count == 3, "the three members started", a);

        // Forked in the file's order, and each member saw every member before it in the file already running when it
        // started (the lines themselves may be written in any order: the members run concurrently).
        AssertForkedInOrder(["a", "b", "c"], started);
        Assert.Contains("a", Seen(started.Single(e => e.Member == "b")));
        Assert.Contains("a", Seen(started.Single(e => e.Member == "c")));
        Assert.Contains("b", Seen(started.Single(e => e.Member == "c")));

        // A member records its own start as soon as it runs, possibly before the supervisor has logged it (a CI run saw
        // the three starts recorded and only "a" logged): wait for the last one's line.
        await a.WaitForStderrAsync("Started member c");
        Assert.Equal(["a", "b", "c"], StartedInLog(a));

        a.Signal(Native.SigTerm);
        Assert.True(await a.WaitForExitAsync(TimeSpan.FromSeconds(30)) == ExitCodes.Ok, a.Output);
        var events = _group.Events;
        Assert.Equal(["c", "b", "a"], events.Where(e => e.Kind == "stop").Select(e => e.Member));

        // Each member's whole process group was gone before the next was told to stop: its SIGTERM handler (and its
        // children) ran to the end first. The log says the same: each exit before the next stop.
        Assert.False(a.Logged(HighlanderEventIds.MemberKilled), a.Output);
        var stopLog = a.Stderr.Split('\n').Where(l => l.Contains($"[{HighlanderEventIds.MemberStopping}]", StringComparison.Ordinal) || l.Contains($"[{HighlanderEventIds.MemberExited}]", StringComparison.Ordinal)).ToList();
        Assert.Equal(6, stopLog.Count);
        for (var i = 0; i < 6; i += 2)
        {
            var member = new[] { "c", "b", "a" }[i / 2];
            Assert.Contains($"Stopping member {member}:", stopLog[i], StringComparison.Ordinal);
            Assert.Contains($"Member {member} (pid", stopLog[i + 1], StringComparison.Ordinal);
        }

        foreach (var start in Starts(events))
        {
            await ProcessWatch.AssertGoneAsync(start.Pid, $"member {start.Member}");
        }

        // Released only after the last member was gone.
        var stderr = a.Stderr;
        Assert.True(stderr.IndexOf($"[{HighlanderEventIds.GroupStopped}]", StringComparison.Ordinal) < stderr.IndexOf($"[{HighlanderEventIds.Released}]", StringComparison.Ordinal), a.Output);
    }

    [Fact]
    public async Task A_member_ignoring_SIGTERM_spends_the_groups_stop_budget_and_the_rest_is_SIGKILLed_at_the_kill_point_before_the_release()
    {
        File.WriteAllText(_group.Procfile, "a: ./member.sh\nb: GROUP_STUBBORN=1 ./member.sh\nc: ./member.sh\n");
        var node = StartNode("n1");
        var started = await _group.WaitAsync(e => Starts(e).Count == 3, "the three members started", node);

        node.Signal(Native.SigTerm);
        Assert.True(await node.WaitForExitAsync(TimeSpan.FromSeconds(30)) == ExitCodes.Ok, node.Output);
        var events = _group.Events;

        // c stopped on SIGTERM; b ignored it and kept the group's one stop budget until the kill point; then b and a were
        // SIGKILLed, in that order (a never got a SIGTERM: the budget was spent).
        Assert.Equal(["stop c", "ignore b"], events.Where(e => e.Kind != "start").Select(e => $"{e.Kind} {e.Member}"));
        var killed = node.LogLines(HighlanderEventIds.MemberKilled);
        Assert.Equal(2, killed.Count);
        Assert.Contains("Member b (process group", killed[0], StringComparison.Ordinal);
        Assert.Contains("Member a (process group", killed[1], StringComparison.Ordinal);
        Assert.Equal(2, node.LogLines(HighlanderEventIds.MemberStopping).Count); // c and b; a had no SIGTERM
        foreach (var start in started)
        {
            await ProcessWatch.AssertGoneAsync(start.Pid, $"member {start.Member}");
        }

        var stderr = node.Stderr;
        Assert.True(stderr.IndexOf($"[{HighlanderEventIds.GroupStopped}]", StringComparison.Ordinal) < stderr.IndexOf($"[{HighlanderEventIds.Released}]", StringComparison.Ordinal), node.Output);
    }

    [Fact]
    public async Task Every_member_dies_with_a_SIGKILLed_highlander_and_the_follower_takes_over_after_the_lease()
    {
        var first = StartNode("n1");
        var started = await _group.WaitAsync(e => Starts(e).Count == 3, "n1's members started", first);
        var second = StartNode("n2");
        await second.WaitLoggedAsync(HighlanderEventIds.Following);

        first.Signal(Native.SigKill);
        foreach (var start in started)
        {
            await ProcessWatch.AssertGoneAsync(start.Pid, $"n1's member {start.Member}", TimeSpan.FromSeconds(10));
        }

        var events = await _group.WaitAsync(e => Starts(e).Count(s => s.Node == "n2") == 3, "n2's members started", second);
        Assert.DoesNotContain(events, e => e.Node == "n1" && e.Kind != "start"); // killed, not stopped: nothing journaled
        AssertForkedInOrder(["a", "b", "c"], events.Where(e => e.Node == "n2"));
    }

    [Theory]
    [InlineData("one-for-one", new[] { "b" }, new string[0])]
    [InlineData("one-for-all", new[] { "a", "b", "c" }, new[] { "c", "a" })]
    [InlineData("rest-for-one", new[] { "b", "c" }, new[] { "c" })]
    public async Task A_failed_member_restarts_exactly_the_members_of_its_strategy_without_losing_the_lock(string strategy, string[] restarted, string[] stopped)
    {
        var node = StartNode("n1", "--strategy", strategy, "--fencing");
        var first = await _group.WaitAsync(e => Starts(e).Count == 3, "the three members started", node);
        var token = first[0].Token;
        Assert.NotEqual("", token);

        _group.MakeExit("b", 3);
        var events = await _group.WaitAsync(e => Starts(e).Count == 3 + restarted.Length, "the restarts", node);

        // After b's exit: the others of the strategy's scope were stopped (reverse order), then the scope started in order.
        var after = events.SkipWhile(e => e.Kind != "exit").ToList();
        Assert.True(after[0] is { Kind: "exit", Member: "b", Detail: "3" }, _group.Describe());
        Assert.Equal(stopped, after.Where(e => e.Kind == "stop").Select(e => e.Member));
        Assert.Equal(restarted.Order(), after.Where(e => e.Kind == "start").Select(e => e.Member).Order());
        AssertForkedInOrder(restarted, after);
        Assert.True(after.FindLastIndex(e => e.Kind == "stop") < after.FindIndex(e => e.Kind == "start"), _group.Describe());

        // The members left alone kept running: one start each, the same process.
        foreach (var member in new[] { "a", "b", "c" }.Except(restarted))
        {
            Assert.Single(events, e => e.Kind == "start" && e.Member == member);
            Assert.DoesNotContain(events, e => e.Kind == "stop" && e.Member == member);
        }

        // Restarts happen under the lock: one acquisition, one fencing token for every start.
        Assert.All(Starts(events), e => Assert.Equal(token, e.Token));
        Assert.Single(node.LogLines(HighlanderEventIds.Acquired));
        Assert.False(node.Logged(HighlanderEventIds.Released), node.Output);
        Assert.Single(node.LogLines(HighlanderEventIds.MemberRestarting));
        Assert.Contains($"({strategy}: member b exited with code 3)", node.LogLines(HighlanderEventIds.MemberRestarting)[0], StringComparison.Ordinal);

        // And the group still stops as a whole, in reverse order.
        var mark = events.Count;
        node.Signal(Native.SigTerm);
        Assert.True(await node.WaitForExitAsync(TimeSpan.FromSeconds(30)) == ExitCodes.Ok, node.Output);
        Assert.Equal(["c", "b", "a"], _group.Events.Skip(mark).Where(e => e.Kind == "stop").Select(e => e.Member));
    }

    [Fact]
    public async Task Each_member_follows_its_own_restart_policy()
    {
        // a: always (the default, --restart) restarts even after exit 0; b: on-failure does not after exit 0; c: never does not after a failure.
        var node = StartNode("n1", "--member-restart", "b=on-failure", "--member-restart", "c=never");
        await _group.WaitAsync(e => Starts(e).Count == 3, "the three members started", node);

        _group.MakeExit("a", 0);
        await _group.WaitAsync(e => Starts(e).Count(s => s.Member == "a") == 2, "a restarted after exit 0", node);
        _group.MakeExit("b", 0);
        _group.MakeExit("c", 4);
        await node.WaitForStderrAsync("Member c exited with code 4 and is not restarted");
        await node.WaitForStderrAsync("Member b exited with code 0 and is not restarted");

        var mark = _group.Events.Count;
        node.Signal(Native.SigTerm);
        Assert.True(await node.WaitForExitAsync(TimeSpan.FromSeconds(30)) == ExitCodes.Ok, node.Output);
        var events = _group.Events;
        Assert.Equal(2, Starts(events).Count(e => e.Member is "b" or "c"));
        Assert.Equal(["a"], events.Skip(mark).Where(e => e.Kind == "stop").Select(e => e.Member));
        Assert.Equal(2, node.LogLines(HighlanderEventIds.MemberNotRestarted).Count);
    }

    [Fact]
    public async Task A_group_over_its_restart_intensity_stops_every_member_and_exits_1()
    {
        var node = StartNode("n1", "--max-restarts", "2", "--restart-window", "10m");
        for (var round = 1; round <= 3; round++)
        {
            await _group.WaitAsync(e => Starts(e).Count(s => s.Member == "b") == round, $"b's start {round}", node);
            _group.MakeExit("b", 1);
        }

        Assert.True(await node.WaitForExitAsync(TimeSpan.FromSeconds(60)) == ExitCodes.Failure, node.Output);
        Assert.True(node.Logged(HighlanderEventIds.GroupCrashLoop), node.Output);
        Assert.Contains("the group restarted more than 2 times", node.Stderr, StringComparison.Ordinal);
        var events = _group.Events;
        Assert.Equal(3, events.Count(e => e.Kind == "exit" && e.Member == "b"));
        Assert.Equal(["c", "a"], events.Where(e => e.Kind == "stop").Select(e => e.Member)); // b had exited; the others, in reverse
        Assert.True(node.Stderr.IndexOf($"[{HighlanderEventIds.GroupStopped}]", StringComparison.Ordinal) < node.Stderr.IndexOf($"[{HighlanderEventIds.Released}]", StringComparison.Ordinal), node.Output);
    }

    [Fact]
    public async Task A_hand_over_stops_every_member_of_the_old_leader_before_any_member_of_the_new_one_starts()
    {
        var first = StartNode("n1");
        await _group.WaitAsync(e => Starts(e).Count == 3, "n1's members started", first);
        var second = StartNode("n2");
        await second.WaitLoggedAsync(HighlanderEventIds.Following);

        first.Signal(Native.SigTerm);
        var events = await _group.WaitAsync(e => Starts(e).Count(s => s.Node == "n2") == 3, "n2's members started", second);
        Assert.True(await first.WaitForExitAsync(TimeSpan.FromSeconds(30)) == ExitCodes.Ok, first.Output);

        var firstOfSecond = events.ToList().FindIndex(e => e.Node == "n2");
        var stopsOfFirst = events.Take(firstOfSecond).Where(e => e.Kind == "stop" && e.Node == "n1").Select(e => e.Member);
        Assert.Equal(["c", "b", "a"], stopsOfFirst);
        Assert.DoesNotContain(events.Skip(firstOfSecond), e => e.Node == "n1");
        AssertForkedInOrder(["a", "b", "c"], events.Where(e => e.Node == "n2"));
        foreach (var start in Starts(events).Where(e => e.Node == "n1"))
        {
            Assert.False(Native.ProcessAlive(start.Pid), $"n1's member {start.Member} (pid {start.Pid}) is still alive\n{_group.Describe()}");
        }
    }

    [Fact]
    public async Task Members_get_their_names_and_their_output_is_prefixed_with_the_member_name()
    {
        File.WriteAllText(_group.Procfile, "web: echo \"out $HIGHLANDER_MEMBER of $HIGHLANDER_NAME on $HIGHLANDER_NODE in $(basename \"$PWD\")\"; echo oops >&2; exec sleep 300\nworker-long: echo 'a line'; printf 'no newline'\n");
        var node = StartNode("n1", "--member-restart", "worker-long=never");
        var web = "web".PadRight("worker-long".Length) + " | ";
        await node.WaitForStdoutAsync(web + "out");
        Assert.Contains($"{web}out web of {_name} on n1 in {Path.GetFileName(_group.Path)}", node.Stdout, StringComparison.Ordinal);
        await node.WaitForStdoutAsync("worker-long | no newline"); // the last line, without its newline, at the end of the output
        Assert.Contains("worker-long | a line\n", node.Stdout, StringComparison.Ordinal);
        await node.WaitForStderrAsync(web + "oops");
        Assert.DoesNotContain("oops", node.Stdout, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Status_shows_the_group_as_its_one_name_with_the_leading_node_and_the_members_fencing_token()
    {
        var node = StartNode("n1", "--fencing");
        var started = await _group.WaitAsync(e => Starts(e).Count == 3, "the three members started", node);

        var (code, status) = await CliProcess.RunAsync(["status", "--json"], _group.Environment(pg.ConnectionString));
        Assert.True(code == 0, status.Output);
        using var json = System.Text.Json.JsonDocument.Parse(status.Stdout);
        var entry = Assert.Single(json.RootElement.EnumerateArray(), e => e.GetProperty("name").GetString() == _name); // one name, not one per member
        Assert.Equal("n1", entry.GetProperty("leader").GetProperty("node").GetString());
        Assert.Equal(started[0].Token, entry.GetProperty("epoch").GetInt64().ToString(System.Globalization.CultureInfo.InvariantCulture));
        Assert.All(started, e => Assert.Equal(started[0].Token, e.Token));
    }

    private CliProcess StartNode(string id, params string[] extra)
    {
        var cli = CliProcess.Start(["run", "--name", _name, "--node-id", id, "--procfile", _group.Procfile, .. Timings, .. extra], _group.Environment(pg.ConnectionString));
        _nodes.Add(cli);
        return cli;
    }

    private static List<GroupEvent> Starts(IEnumerable<GroupEvent> events) => [.. events.Where(e => e.Kind == "start")];

    /// <summary>
    /// Asserts that the members' processes were forked in <paramref name="order"/>: their pids (the kernel hands them out
    /// in increasing order, wrapping at pid_max) increase in that order. A wrap shows as a jump of more than half of
    /// pid_max and is allowed; a wrong order shows as a small decrease.
    /// </summary>
    private static void AssertForkedInOrder(IReadOnlyList<string> order, IEnumerable<GroupEvent> events)
    {
        var pidMax = long.Parse(File.ReadAllText("/proc/sys/kernel/pid_max").Trim(), System.Globalization.CultureInfo.InvariantCulture);
        var starts = events.Where(e => e.Kind == "start").ToList();
        var pids = order.Select(m => (long)starts.Single(e => e.Member == m).Pid).ToList();
        for (var i = 1; i < pids.Count; i++)
        {
            var step = ((pids[i] - pids[i - 1]) % pidMax + pidMax) % pidMax;
            Assert.True(step > 0 && step < pidMax / 2, $"{order[i - 1]} (pid {pids[i - 1]}) was not forked before {order[i]} (pid {pids[i]})\n{string.Join("\n", starts)}");
        }
    }

    private static string[] Seen(GroupEvent start) => start.Detail.Split(',', StringSplitOptions.RemoveEmptyEntries);

    /// <summary>The members in the order highlander logged their starts.</summary>
    private static List<string> StartedInLog(CliProcess cli) =>
        [.. cli.LogLines(HighlanderEventIds.MemberStarted).Select(l => l[(l.IndexOf("Started member ", StringComparison.Ordinal) + "Started member ".Length)..].Split(' ')[0])];

    public void Dispose()
    {
        foreach (var node in _nodes)
        {
            node.DisposeAsync().AsTask().GetAwaiter().GetResult();
        }

        _group.Dispose();
    }
}
