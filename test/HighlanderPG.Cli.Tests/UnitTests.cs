using System.Collections;
using System.Diagnostics;
using System.Globalization;
using HighlanderPG.Cli.Configuration;
using HighlanderPG.Cli.Demo;
using HighlanderPG.Cli.Diagnostics;
using HighlanderPG.Cli.Processes;
using HighlanderPG.Cli.Running;
using HighlanderPG.Diagnostics;
using HighlanderPG.Hosting;
using HighlanderPG.Testing.Journal;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.DependencyInjection;

namespace HighlanderPG.Cli.Tests;

/// <summary>The CLI's own parsing, in process.</summary>
public sealed class UnitTests
{
    [Theory]
    [InlineData("500ms", 500)]
    [InlineData("4s", 4_000)]
    [InlineData("2m", 120_000)]
    [InlineData("1h", 3_600_000)]
    [InlineData("1m30s", 90_000)]
    [InlineData("1h2m3s4ms", 3_723_004)]
    [InlineData("0s", 0)]
    public void Durations_parse(string text, long milliseconds)
    {
        Assert.True(Durations.TryParse(text, out var value, out var error), error);
        Assert.Equal(TimeSpan.FromMilliseconds(milliseconds), value);
    }

    [Theory]
    [InlineData("", "required")]
    [InlineData("10", "no unit")]
    [InlineData("1.5s", "whole numbers only")]
    [InlineData("-1s", "expected a whole number")]
    [InlineData("5 s", "unexpected ' '")]
    [InlineData("3d", "unknown unit 'd'")]
    [InlineData("3S", "unexpected 'S'")]
    [InlineData("30s1m", "largest to smallest")]
    [InlineData("1s1s", "largest to smallest")]
    [InlineData("99999999999999999999h", "too long")]
    [InlineData("9999999999999h", "too long")]
    public void Bad_durations_are_refused_with_a_reason(string text, string reason)
    {
        Assert.False(Durations.TryParse(text, out _, out var error));
        Assert.Contains(reason, error);
    }

    [Theory]
    [InlineData(500, "500ms")]
    [InlineData(90_000, "1m30s")]
    [InlineData(0, "0s")]
    public void Durations_format_as_written(long milliseconds, string text) =>
        Assert.Equal(text, Durations.Format(TimeSpan.FromMilliseconds(milliseconds)));

    /// <summary>
    /// A highlander started in the background by a shell inherits SIGQUIT (and SIGINT) ignored: its warm-up SIGQUIT would
    /// never be heard, so it must see that from /proc/self/status and skip it (it waited for nothing before).
    /// </summary>
    [Fact]
    public async Task Ignored_signals_are_read_from_proc_status()
    {
        Assert.True(Native.SignalIgnoredIn("Name:\tsh\nSigBlk:\t0000000000000000\nSigIgn:\t0000000000000006\nSigCgt:\t0000000000010000\n", Native.SigQuit));
        Assert.False(Native.SignalIgnoredIn("SigIgn:\t0000000000000006\n", Native.SigTerm));
        Assert.Null(Native.SignalIgnoredIn("Name:\tx\n", Native.SigQuit));

        // And a real one: a shell's background job ignores SIGQUIT, the shell itself does not.
        var ignored = Process.Start(new ProcessStartInfo("sh", ["-c", "trap '' QUIT; cat /proc/self/status"]) { RedirectStandardOutput = true })!;
        var status = await ignored.StandardOutput.ReadToEndAsync();
        await ignored.WaitForExitAsync();
        Assert.True(Native.SignalIgnoredIn(status, Native.SigQuit), status);
        Assert.False(Native.SignalIgnoredIn(status, Native.SigTerm), status);
        Assert.False(Native.SignalIgnored(Native.SigTerm)); // this test process's own
    }

    [Fact]
    public void The_connection_option_wins_then_HIGHLANDER_CONNECTION_then_PG_variables()
    {
        var environment = new Hashtable { ["HIGHLANDER_CONNECTION"] = "Host=env", ["PGHOST"] = "pghost" };
        Assert.Equal("--connection", ConnectionResolver.Resolve("Host=opt", environment)!.Source);
        Assert.Equal("Host=env", ConnectionResolver.Resolve(null, environment)!.ConnectionString);
        environment.Remove("HIGHLANDER_CONNECTION");
        Assert.Contains("pghost", ConnectionResolver.Resolve(null, environment)!.ConnectionString);
        Assert.Null(ConnectionResolver.Resolve(null, environment, usePgVariables: false));
        Assert.Null(ConnectionResolver.Resolve(null, new Hashtable()));
    }

    [Fact]
    public void PG_variables_build_a_connection_string_and_the_password_is_never_displayed()
    {
        var resolved = ConnectionResolver.Resolve(null, new Hashtable
        {
            ["PGHOST"] = "db.internal", ["PGPORT"] = "6543", ["PGUSER"] = "app", ["PGPASSWORD"] = "sekret", ["PGDATABASE"] = "jobs",
        })!;
        var builder = new Npgsql.NpgsqlConnectionStringBuilder(resolved.ConnectionString);
        Assert.Equal(("db.internal", 6543, "app", "sekret", "jobs"), (builder.Host, builder.Port, builder.Username, builder.Password, builder.Database));
        Assert.Equal("db.internal:6543/jobs", resolved.Display);
        Assert.Throws<FormatException>(() => ConnectionResolver.Resolve(null, new Hashtable { ["PGHOST"] = "h", ["PGPORT"] = "http" }));
    }

    [Fact]
    public void A_validation_problem_names_the_flags_of_the_options_it_lists_not_of_words_in_its_text()
    {
        Assert.Equal(
            "Too fast. (HeartbeatInterval is --heartbeat, LeaseDuration is --lease)",
            RunHost.Describe(new OptionProblem(["HeartbeatInterval", "LeaseDuration"], "Too fast.")));
        Assert.Equal("StopTimeout is mentioned here.", RunHost.Describe(new OptionProblem([], "StopTimeout is mentioned here.")));
        Assert.Equal("No flag sets it.", RunHost.Describe(new OptionProblem(["ReconnectMaxDelay"], "No flag sets it.")));
        Assert.Equal("Restarts. (MaxRestarts is --max-restarts)", RunHost.Describe(new OptionProblem(["MaxRestarts", "MaxRestarts"], "Restarts.")));
    }

    [Fact]
    public void The_library_check_runs_on_the_settings_before_a_host_exists_and_each_problem_names_its_flags()
    {
        var fine = Settings() with { Lease = TimeSpan.FromSeconds(3), Heartbeat = TimeSpan.FromMilliseconds(500), StopTimeout = TimeSpan.FromSeconds(1) };
        Assert.Empty(RunHost.Problems(fine, Registered(fine)));

        var slowHeartbeat = fine with { Heartbeat = TimeSpan.FromSeconds(2) };
        var problems = RunHost.Problems(slowHeartbeat, Registered(slowHeartbeat));
        Assert.NotEmpty(problems);
        Assert.All(problems, p => Assert.Contains("HeartbeatInterval is --heartbeat", p, StringComparison.Ordinal));
        Assert.Contains(problems, p => p.Contains("LeaseDuration is --lease", StringComparison.Ordinal));

        var negative = fine with { MaxRestarts = -1 };
        Assert.Contains(RunHost.Problems(negative, Registered(negative)), p => p.EndsWith("(MaxRestarts is --max-restarts)", StringComparison.Ordinal));
    }

    [Fact]
    public void Without_wait_slice_the_library_default_for_the_lease_stays_and_with_it_the_flag_wins()
    {
        var lease = TimeSpan.FromSeconds(3);
        var options = new HighlanderOptions();
        (Settings() with { Lease = lease }).Apply(options);
        Assert.Equal(new HighlanderOptions { LeaseDuration = lease }.WaitSlice, options.WaitSlice);

        var given = new HighlanderOptions();
        (Settings() with { Lease = lease, WaitSlice = TimeSpan.FromMilliseconds(700) }).Apply(given);
        Assert.Equal(TimeSpan.FromMilliseconds(700), given.WaitSlice);
    }

    private static RunSettings Settings() => new() { Name = "job", Command = ["true"], ConnectionString = "Host=db.internal;Username=app;Database=jobs" };

    private static ServiceCollection Registered(RunSettings settings)
    {
        var services = new ServiceCollection();
        services.AddClusterSingleton(settings.Name, (_, _, _) => Task.CompletedTask, settings.Apply);
        return services;
    }

    [Fact]
    public void A_json_log_line_carries_the_event_id_and_the_message_parameters_and_the_demo_reads_it_by_id()
    {
        var state = new List<KeyValuePair<string, object?>>
        {
            new("Name", "job"),
            new("Pid", 4242),
            new("KillAfter", TimeSpan.FromMilliseconds(750)),
            new("Stubborn", true),
            new("{OriginalFormat}", "Stopping {Name}"),
        };
        var line = CliLoggerProvider.JsonLine(
            new DateTimeOffset(2026, 12, 1, 12, 0, 0, TimeSpan.Zero), "highlander", LogLevel.Warning,
            new EventId(HighlanderEventIds.CommandKilled, "Killing"), "Stopping job:\nnow", state, "boom");

        Assert.DoesNotContain('\n', line);
        using var json = System.Text.Json.JsonDocument.Parse(line);
        var root = json.RootElement;
        Assert.Equal("2026-12-01T12:00:00.0000000Z", root.GetProperty("timestamp").GetString());
        Assert.Equal("warning", root.GetProperty("level").GetString());
        Assert.Equal("highlander", root.GetProperty("category").GetString());
        Assert.Equal(HighlanderEventIds.CommandKilled, root.GetProperty("eventId").GetInt32());
        Assert.Equal("Killing", root.GetProperty("eventName").GetString());
        Assert.Equal("Stopping job:\nnow", root.GetProperty("message").GetString());
        Assert.Equal("boom", root.GetProperty("exception").GetString());
        var parameters = root.GetProperty("state");
        Assert.Equal("job", parameters.GetProperty("Name").GetString());
        Assert.Equal(4242, parameters.GetProperty("Pid").GetInt32());
        Assert.Equal("00:00:00.7500000", parameters.GetProperty("KillAfter").GetString());
        Assert.True(parameters.GetProperty("Stubborn").GetBoolean());
        Assert.False(parameters.TryGetProperty("{OriginalFormat}", out _));

        var entry = NodeLog.Parse(line);
        Assert.NotNull(entry);
        Assert.Equal((HighlanderEventIds.CommandKilled, "warning"), (entry.EventId, entry.Level));
        Assert.Contains(entry.EventId, NodeLog.ShownEvents);
        Assert.Null(NodeLog.Parse("12:00:00.000 warn highlander[2003] Stopping job"));
        Assert.Null(NodeLog.Parse("highlander run: invalid configuration"));
        Assert.Null(NodeLog.Parse("{not json"));
    }

    [Fact]
    public async Task The_journal_keeps_in_process_lives_in_one_order_and_reports_a_start_while_another_runs()
    {
        var directory = Directory.CreateTempSubdirectory("highlander-journal-");
        try
        {
            var journal = new LifeJournal(Path.Combine(directory.FullName, "life.log"));
            var stopped = journal.WaitAsync(e => e.Kind == LifeKind.Stopped && e.Node == "a", timeout: TimeSpan.FromSeconds(10));
            journal.Record("a", "job", LifeKind.Started, token: 7);
            journal.Record("b", "job", LifeKind.Started, "too early");
            journal.Record("a", "job", LifeKind.Stopped);

            Assert.Equal(2, (await stopped).Seq);
            Assert.Equal(
                [(LifeKind.Started, "a", "7"), (LifeKind.Started, "b", null), (LifeKind.Stopped, "a", null)],
                journal.Events.Select(e => (e.Kind, e.Node, e.Token)));
            Assert.Equal("too early", journal.Events[1].Detail);
            var violation = Assert.Single(journal.Violations);
            Assert.Contains("job started on b", violation, StringComparison.Ordinal);

            // Another reader of the same file sees the same lines in the same order.
            var reader = new LifeJournal(journal.Path);
            Assert.Equal(3, reader.Poll().Count);
            Assert.Equal(journal.Violations, reader.Violations);
            await Assert.ThrowsAsync<TimeoutException>(() => reader.WaitAsync(e => e.Kind == LifeKind.Killed, timeout: TimeSpan.FromMilliseconds(100)));
        }
        finally
        {
            directory.Delete(recursive: true);
        }
    }

    [Fact]
    public async Task The_journal_script_waits_for_the_kernel_lock_and_says_it_overlapped_until_the_first_child_stops()
    {
        var directory = Directory.CreateTempSubdirectory("highlander-journal-");
        var journal = new LifeJournal(Path.Combine(directory.FullName, "life.log"));
        var script = Path.Combine(directory.FullName, "child.sh");
        await LifeJournal.WriteChildScriptAsync(script);
        var processes = new List<int>();
        try
        {
            var a = Start("a", "5");
            var aStarted = await journal.WaitAsync(e => e.Kind == LifeKind.Started && e.Node == "a");
            var aGrandchild = await journal.WaitAsync(e => e.Kind == LifeKind.Grandchild && e.Node == "a");
            processes.Add(int.Parse(aGrandchild.Detail!, CultureInfo.InvariantCulture));
            Assert.Equal(("job", a, "5", true), (aStarted.Singleton, aStarted.Pid, aStarted.Token, aStarted.FromScript));

            Start("b", null);
            var overlap = await journal.WaitAsync(e => e.Kind == LifeKind.Overlap && e.Node == "b");
            Assert.DoesNotContain(journal.Events, e => e.Kind == LifeKind.Started && e.Node == "b");

            Assert.True(Native.SignalProcess(a, Native.SigTerm));
            var aStopped = await journal.WaitAsync(e => e.Kind == LifeKind.Stopped && e.Node == "a", overlap.Seq);
            var bStarted = await journal.WaitAsync(e => e.Kind == LifeKind.Started && e.Node == "b", overlap.Seq);
            Assert.True(aStopped.Seq < bStarted.Seq, journal.Describe());
            Assert.Null(bStarted.Token);
            var violation = Assert.Single(journal.Violations);
            Assert.Contains("started on b", violation, StringComparison.Ordinal);
            Assert.Equal(bStarted, journal.Current("job"));
        }
        finally
        {
            foreach (var pid in processes)
            {
                Native.SignalProcess(pid, Native.SigKill);
            }

            await journal.WaitAsync(e => e.Kind == LifeKind.Grandchild && e.Node == "b", timeout: TimeSpan.FromSeconds(5))
                .ContinueWith(t => t.IsCompletedSuccessfully && Native.SignalProcess(int.Parse(t.Result.Detail!, CultureInfo.InvariantCulture), Native.SigKill), TaskScheduler.Default);
            directory.Delete(recursive: true);
        }

        int Start(string node, string? token)
        {
            var info = new ProcessStartInfo("sh") { ArgumentList = { script } };
            foreach (var (name, value) in journal.ChildEnvironment(nap: TimeSpan.FromMinutes(5)))
            {
                info.Environment[name] = value;
            }

            info.Environment["HIGHLANDER_NODE"] = node;
            info.Environment["HIGHLANDER_NAME"] = "job";
            info.Environment["HIGHLANDER_FENCING_TOKEN"] = token;
            using var process = Process.Start(info)!;
            processes.Add(process.Id);
            return process.Id;
        }
    }

    [Fact]
    public void The_demo_fails_an_overlap_the_lease_promises_to_prevent_and_only_notes_one_it_cannot()
    {
        var directory = Directory.CreateTempSubdirectory("highlander-journal-");
        try
        {
            var path = Path.Combine(directory.FullName, "life.log");
            var injected = DateTimeOffset.UtcNow;
            var at = (DateTimeOffset.UtcNow - DateTimeOffset.UnixEpoch).Ticks * 100;
            string Line(string kind, string node, int pid, int ms, string token) => $"{kind} {node} demo {pid} {at + (ms * 1_000_000L)} {token} script\n";
            File.WriteAllText(path, Line("start", "n1", 100, 0, "1") + Line("overlap", "n2", 200, 1, "2") + Line("stop", "n1", 100, 5, "-") + Line("start", "n2", 200, 6, "2"));
            var journal = new LifeJournal(path);
            journal.Poll();
            var events = journal.Events;
            var (child, next) = (events[0], events[3]);

            var findings = new DemoFindings();
            var promised = FaultJudge.Judge("kill -9", orderGuaranteed: true, TimeSpan.FromSeconds(10), "n1", child, 1, injected, next, events, oldChildAlive: false, findings);
            Assert.Equal(("TWO CHILDREN AT ONCE", false, false, "n2"), (promised.Verdict, promised.Ok, promised.OldStoppedFirst, promised.LeaderAfter));
            Assert.Single(findings.Violations);

            var notPromised = FaultJudge.Judge("backend killed", orderGuaranteed: false, TimeSpan.FromSeconds(10), "n1", child, 1, injected, next, events, oldChildAlive: false, findings);
            Assert.True(notPromised.Ok);
            Assert.Equal(TimeSpan.FromMilliseconds(4), notPromised.KnownOverlap);
            Assert.Equal("overlap 4 ms: needs fencing", notPromised.Verdict);
            Assert.Single(findings.Violations);
            Assert.Single(findings.Notes);

            var clean = new LifeJournal(Path.Combine(directory.FullName, "clean.log"));
            File.WriteAllText(clean.Path, Line("start", "n1", 100, 0, "1") + Line("stop", "n1", 100, 5, "-") + Line("start", "n2", 200, 6, "2"));
            clean.Poll();
            var ok = FaultJudge.Judge("graceful", orderGuaranteed: true, TimeSpan.FromSeconds(10), "n1", clean.Events[0], 1, injected, clean.Events[2], clean.Events, oldChildAlive: false, findings);
            Assert.Equal(("ok", true, true), (ok.Verdict, ok.Ok, ok.OldStoppedFirst));
            Assert.StartsWith("stopped after", ok.OldChild, StringComparison.Ordinal);
            Assert.Empty(clean.Violations);

            var lost = FaultJudge.Judge("cut off", orderGuaranteed: true, TimeSpan.FromSeconds(10), "n1", clean.Events[0], 3, injected, null, clean.Events, oldChildAlive: false, findings);
            Assert.Equal(("NOT RECOVERED within 10s", false), (lost.Verdict, lost.Ok));
            Assert.Equal(2, findings.Violations.Count);
        }
        finally
        {
            directory.Delete(recursive: true);
        }
    }

    /// <summary>
    /// <see cref="Native.LowerThreadsNamed"/>: the threads of that name, and only those, at nice 19 under <c>SCHED_IDLE</c>;
    /// once each; a thread gone is dropped from the set.
    /// </summary>
    [Fact]
    public void Lowering_threads_by_name_lowers_those_only_once_each_and_forgets_them_when_they_end()
    {
        using var release = new ManualResetEventSlim();
        using var ready = new CountdownEvent(2);
        var tids = new int[2];
        Thread Start(int i, string name)
        {
            var thread = new Thread(() =>
            {
                tids[i] = Native.CurrentThreadId();
                ready.Signal();
                release.Wait();
            }) { Name = name, IsBackground = true };
            thread.Start();
            return thread;
        }

        var lowered = Start(0, "hl-lower-me");
        var other = Start(1, "hl-leave-me");
        ready.Wait(TimeSpan.FromSeconds(10));
        try
        {
            var done = new HashSet<int>();
            Assert.Equal(1, Native.LowerThreadsNamed("hl-lower-me", done));
            Assert.Equal([tids[0]], done);
            Assert.Equal((19, SchedIdle), (NiceOf(tids[0]), PolicyOf(tids[0])));
            Assert.Equal((NiceOf(Environment.ProcessId), PolicyOf(Environment.ProcessId)), (NiceOf(tids[1]), PolicyOf(tids[1])));
            Assert.NotEqual(SchedIdle, PolicyOf(tids[1]));
            Assert.Equal(0, Native.LowerThreadsNamed("hl-lower-me", done)); // already done
        }
        finally
        {
            release.Set();
        }

        lowered.Join();
        other.Join();
        // Joined, the thread may still be ending in the kernel for a moment: until its /proc entry is gone.
        var until = DateTime.UtcNow + TimeSpan.FromSeconds(10);
        while (Directory.Exists($"/proc/self/task/{tids[0]}") && DateTime.UtcNow < until)
        {
            Thread.Sleep(10);
        }

        var after = new HashSet<int> { tids[0] };
        Assert.Equal(0, Native.LowerThreadsNamed("hl-lower-me", after));
        Assert.Empty(after); // the thread has ended
    }

    private const int SchedIdle = 5;

    /// <summary>The nice value of thread <paramref name="tid"/> of this process (field 19 of its stat).</summary>
    private static int NiceOf(int tid) => StatField(tid, 19);

    /// <summary>The scheduling policy of thread <paramref name="tid"/> of this process (field 41 of its stat).</summary>
    private static int PolicyOf(int tid) => StatField(tid, 41);

    private static int StatField(int tid, int field)
    {
        var stat = File.ReadAllText($"/proc/self/task/{tid}/stat");
        return int.Parse(stat[(stat.LastIndexOf(')') + 2)..].Split(' ')[field - 3], CultureInfo.InvariantCulture);
    }
}
