using System.Diagnostics;
using System.Globalization;
using HighlanderPG.Diagnostics;
using HighlanderPG.Leasing;
using HighlanderPG.Testing;
using HighlanderPG.Tests.Infrastructure;
using Npgsql;
using Xunit.Abstractions;

namespace HighlanderPG.Tests;

/// <summary>
/// A forward step of the PostgreSQL server's wall clock (which ends idle sessions early, freeing their locks: PostgreSQL
/// measures <c>idle_session_timeout</c>, the server-side lease, on its wall clock). The step is made by libfaketime
/// preloaded into a throwaway server of the test's own, so the machine's clock (and every other test) is left alone.
/// </summary>
/// <remarks>
/// Run alone, after the parallel tests (<see cref="ServerClockStepCollection"/>): libfaketime re-reads its offset file at
/// every clock reading of the server (FAKETIME_NO_CACHE), which makes these servers busy, and the other tests' 3 s leases
/// must not share the machine's two cores with them.
/// </remarks>
[Collection(ServerClockStepCollection.Name)]
public sealed class ServerClockStepTests(ITestOutputHelper output) : IDisposable
{
    /// <summary>One a test (xUnit makes an instance a test): a failure meanwhile says whether the machine's clock stepped.</summary>
    private readonly MachineClockWatch _machineClock = new();

    /// <summary>The step: far more than a lease, as a real clock step of the fault run (+10..60 s).</summary>
    private static readonly TimeSpan Step = TimeSpan.FromSeconds(30);

    /// <summary>The bound on every wait for something that must happen (generous: the machine is shared).</summary>
    private static readonly TimeSpan WaitBound = TimeSpan.FromSeconds(60);

    [Fact]
    public async Task The_faked_server_clock_steps_forward_in_an_open_session()
    {
        await using var server = await FakeClockServer.StartAsync();
        await using var session = await OpenAsync(server.ConnectionString, "clock-reader");

        // Real time between the two readings is at most the stopwatch's: the difference is Step plus that.
        var watch = Stopwatch.StartNew();
        var before = await ServerClockAsync(session);
        server.StepForward(Step);
        var after = await ServerClockAsync(session);
        watch.Stop();

        var moved = after - before;
        Assert.True(
            moved >= Step && moved <= Step + watch.Elapsed + TimeSpan.FromMilliseconds(1),
            $"The server's clock moved {moved.TotalSeconds:0.000} s while the test's stopwatch moved {watch.Elapsed.TotalSeconds:0.000} s: " +
            $"expected {Step.TotalSeconds:0} s more than real time.{_machineClock.Note()}");

        // A session opened after the step sees the stepped clock too (every backend reads the file).
        await using var later = await OpenAsync(server.ConnectionString, "clock-reader-2");
        var sinceStep = await ServerClockAsync(later) - DateTimeOffset.UtcNow;
        Assert.True(sinceStep > Step - TimeSpan.FromSeconds(5), $"A new session's server clock is {sinceStep.TotalSeconds:0.000} s ahead of the machine's.{_machineClock.Note()}");

        // A restart keeps the server's environment: its clock is still ahead.
        await later.CloseAsync();
        await session.CloseAsync();
        await server.Server.RestartAsync();
        await using var restarted = await OpenAsync(server.ConnectionString, "clock-reader-3");
        var afterRestart = await ServerClockAsync(restarted) - DateTimeOffset.UtcNow;
        Assert.True(afterRestart > Step - TimeSpan.FromSeconds(5), $"After a restart the server clock is {afterRestart.TotalSeconds:0.000} s ahead of the machine's.{_machineClock.Note()}");
    }

    [Fact]
    public async Task A_server_environment_variable_must_have_a_valid_name_and_a_single_line_value()
    {
        await Assert.ThrowsAsync<ArgumentException>(() => LocalPostgresServer.StartAsync(new LocalPostgresOptions { ServerEnvironment = { ["1BAD"] = "x" } }));
        await Assert.ThrowsAsync<ArgumentException>(() => LocalPostgresServer.StartAsync(new LocalPostgresOptions { ServerEnvironment = { ["A=B"] = "x" } }));
        await Assert.ThrowsAsync<ArgumentException>(() => LocalPostgresServer.StartAsync(new LocalPostgresOptions { ServerEnvironment = { ["GOOD"] = "two\nlines" } }));
        await Assert.ThrowsAsync<ArgumentException>(() => LocalPostgresServer.StartAsync(new LocalPostgresOptions { ServerEnvironment = null! }));
    }

    /// <summary>
    /// A follower that has read the server's clock sees it step forward: it logs
    /// <see cref="HighlanderEventIds.ServerClockStepped"/> and takes no lock for a lease after it saw the step, even though
    /// the lock is free at once; then it takes it.
    /// </summary>
    [Fact]
    public async Task A_follower_that_saw_the_server_clock_step_forward_takes_no_lock_for_a_lease_after_it()
    {
        await using var server = await FakeClockServer.StartAsync();
        await using var cluster = new TestCluster(server.ConnectionString);
        await using var holder = RawHolder(server.ConnectionString);
        var lease = await FollowAsync(server.ConnectionString, cluster, holder);

        var stepping = Stopwatch.GetTimestamp();
        server.StepForward(Step);
        await holder.CloseAsync();
        var freed = Stopwatch.GetTimestamp();

        var childStarted = await WaitForLogAsync(cluster, e => e.EventId.Id == HighlanderEventIds.ChildStarted, "start its child after the lock-delay");
        var sawStep = cluster.Logs.Entries.FirstOrDefault(e => e.Node == NodeId && e.EventId.Id == HighlanderEventIds.ServerClockStepped);
        Assert.True(sawStep is not null, Describe(cluster, "the node did not log the server clock step (event 1009) before its child started"));
        Assert.True(sawStep.Level == Microsoft.Extensions.Logging.LogLevel.Warning, Describe(cluster, "event 1009 is not a warning"));
        Assert.True(sawStep.Timestamp >= stepping, Describe(cluster, "the step was logged before it was made"));
        Assert.True(sawStep.Timestamp < childStarted.Timestamp, Describe(cluster, "the child started before the step was seen"));

        // Seen at the latest when the node tried the freed key; at the earliest right after the step (a heartbeat in
        // between): so from the freeing, up to 10 % of a lease may already have run.
        var delayed = Stopwatch.GetElapsedTime(freed, childStarted.Timestamp);
        output.WriteLine(Describe(cluster, $"child started {delayed.TotalSeconds:0.000} s after the lock was freed (lease {lease.TotalSeconds:0.0} s)"));
        Assert.True(
            delayed >= lease * 0.9,
            Describe(cluster, $"the child started {delayed.TotalSeconds:0.000} s after the lock was freed, less than the lease ({lease.TotalSeconds:0.0} s) the node must wait after it saw the step"));
    }

    /// <summary>The same without a step: no <see cref="HighlanderEventIds.ServerClockStepped"/>, and the follower takes the freed lock.</summary>
    [Fact]
    public async Task Without_a_step_the_follower_logs_no_clock_step_and_takes_the_freed_lock()
    {
        await using var server = await FakeClockServer.StartAsync();
        await using var cluster = new TestCluster(server.ConnectionString);
        await using var holder = RawHolder(server.ConnectionString);
        await FollowAsync(server.ConnectionString, cluster, holder);

        await holder.CloseAsync();
        await WaitForLogAsync(cluster, e => e.EventId.Id == HighlanderEventIds.ChildStarted, "start its child");
        Assert.False(
            cluster.Logs.Entries.Any(e => e.EventId.Id == HighlanderEventIds.ServerClockStepped),
            Describe(cluster, "the node logged a server clock step (event 1009) although the server's clock did not step"));
    }

    /// <summary>
    /// A try statement that reaches the server late (here: the node's lock-session backend is stopped with SIGSTOP for
    /// twice the step tolerance while the statement is sent) without any step of the server's clock: the node must not
    /// take that for a clock step (no event 1009, no lock-delay).
    /// </summary>
    [Fact]
    public async Task A_try_statement_that_reaches_the_server_late_is_no_clock_step()
    {
        await using var server = await LocalPostgresServer.StartAsync();
        await using var cluster = new TestCluster(server.ConnectionString);
        await using var holder = RawHolder(server.ConnectionString);
        await FollowAsync(server.ConnectionString, cluster, holder);

        var pid = await Db.ScalarAsync<int>(
            server.ConnectionString, "SELECT pid FROM pg_stat_activity WHERE application_name = $1", HolderQuery.ApplicationNamePrefix + NodeId);
        await SignalAsync("STOP", pid);
        try
        {
            await holder.CloseAsync();
            await Task.Delay(TimeSpan.FromSeconds(1)); // the stall itself: the fault being injected, not a synchronisation
        }
        finally
        {
            await SignalAsync("CONT", pid);
        }

        await WaitForLogAsync(cluster, e => e.EventId.Id == HighlanderEventIds.ChildStarted, "start its child");
        output.WriteLine(Describe(cluster, "the node after the stalled try statement"));
        Assert.False(
            cluster.Logs.Entries.Any(e => e.EventId.Id == HighlanderEventIds.ServerClockStepped),
            Describe(cluster, "the node logged a server clock step (event 1009) although the server's clock did not step"));
    }

    private static async Task SignalAsync(string signal, int pid)
    {
        using var kill = Process.Start(new ProcessStartInfo("kill", ["-" + signal, pid.ToString(CultureInfo.InvariantCulture)]))!;
        await kill.WaitForExitAsync();
        Assert.Equal(0, kill.ExitCode);
    }

    private const string NodeId = "follower";

    /// <summary>A session of the test's own (not a node's), to hold the singleton's lock by hand.</summary>
    private static NpgsqlConnection RawHolder(string connectionString) =>
        new(new NpgsqlConnectionStringBuilder(connectionString) { Pooling = false, ApplicationName = "raw-holder" }.ConnectionString);

    /// <summary>
    /// Takes the "job" singleton's lock on <paramref name="holder"/>, starts a node that follows it, and waits until the
    /// node's lock session has made a round trip after the node saw the holder (so the node has read the server's clock
    /// as a follower). Returns the node's lease.
    /// </summary>
    private async Task<TimeSpan> FollowAsync(string connectionString, TestCluster cluster, NpgsqlConnection holder)
    {
        await holder.OpenAsync();
        await using (var take = new NpgsqlCommand("SELECT pg_advisory_lock($1)", holder) { Parameters = { new() { Value = SingletonKey.Derive(cluster.Namespace, "job") } } })
        {
            await take.ExecuteNonQueryAsync();
        }

        var lease = TimeSpan.Zero;
        await cluster.StartNodeAsync(NodeId, configure: o => lease = o.LeaseDuration);
        await WaitForLogAsync(cluster, e => e.EventId.Id == HighlanderEventIds.Following, "follow the raw holder");

        // Two statements of the node's lock session that started after now (server time): the lock session is serial, so
        // the first one's reply was read by the node before the second was sent.
        await using var probe = await OpenAsync(connectionString, "heartbeat-probe");
        var since = await ServerClockAsync(probe);
        for (var i = 0; i < 2; i++)
        {
            since = await WaitForLockSessionStatementAfterAsync(probe, HolderQuery.ApplicationNamePrefix + NodeId, since, cluster);
        }

        return lease;
    }

    /// <summary>
    /// Polls <c>pg_stat_activity</c> (the server's own record; the node exposes no heartbeat event) until the lock session of
    /// <paramref name="applicationName"/> has started a statement after <paramref name="since"/>; returns its start.
    /// </summary>
    private async Task<DateTimeOffset> WaitForLockSessionStatementAfterAsync(
        NpgsqlConnection probe, string applicationName, DateTimeOffset since, TestCluster cluster)
    {
        var watch = Stopwatch.StartNew();
        while (true)
        {
            await using (var query = new NpgsqlCommand(
                "SELECT max(query_start) FROM pg_stat_activity WHERE application_name = $1 AND query_start > $2", probe)
            {
                Parameters = { new() { Value = applicationName }, new() { Value = since } },
            })
            {
                if (await query.ExecuteScalarAsync() is DateTime started)
                {
                    return new DateTimeOffset(DateTime.SpecifyKind(started, DateTimeKind.Utc));
                }
            }

            Assert.True(watch.Elapsed < WaitBound, Describe(cluster, $"the node's lock session ran no statement after {since:O} (server time)"));
            await Task.Delay(50);
        }
    }

    private async Task<LogCapture.LogEntry> WaitForLogAsync(TestCluster cluster, Func<LogCapture.LogEntry, bool> match, string what)
    {
        try
        {
            return await cluster.Logs.WaitAsync(e => e.Node == NodeId && match(e), WaitBound);
        }
        catch (TimeoutException)
        {
            Assert.Fail(Describe(cluster, $"the node did not {what} within {WaitBound.TotalSeconds:0} s"));
            throw;
        }
    }

    private static async Task<NpgsqlConnection> OpenAsync(string connectionString, string applicationName)
    {
        var connection = new NpgsqlConnection(new NpgsqlConnectionStringBuilder(connectionString) { Pooling = false, ApplicationName = applicationName }.ConnectionString);
        await connection.OpenAsync();
        return connection;
    }

    private static async Task<DateTimeOffset> ServerClockAsync(NpgsqlConnection connection)
    {
        await using var command = new NpgsqlCommand("SELECT clock_timestamp()", connection);
        var value = (DateTime)(await command.ExecuteScalarAsync())!;
        return new DateTimeOffset(DateTime.SpecifyKind(value, DateTimeKind.Utc));
    }

    public void Dispose() => _machineClock.Dispose();

    private string Describe(TestCluster cluster, string problem) =>
        problem + _machineClock.Note() + "\nLogs:\n" + string.Join(
            "\n",
            cluster.Logs.Entries.Select(e => string.Create(
                CultureInfo.InvariantCulture,
                $"  {e.At:HH:mm:ss.fff} {e.Node} {e.EventId.Id} {e.Level} {e.Message}{(e.Exception is null ? "" : " | " + e.Exception.Message)}")));
}

/// <summary>The server clock step tests' own collection: not run in parallel with any other test.</summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class ServerClockStepCollection
{
    public const string Name = "server clock steps (alone)";
}
