using HighlanderPG.Testing;
using HighlanderPG.Tests.Infrastructure;
using Npgsql;

namespace HighlanderPG.Tests.Leasing;

/// <summary>
/// A lock session's repeated statements are prepared on the server (Npgsql's automatic preparation) and planned once
/// (<c>plan_cache_mode</c>), the waiter's are not, and a connection string that sets <c>Max Auto Prepare</c> is obeyed. Seen in the server's own log
/// (log_statement = all: a prepared statement runs as <c>execute _auto…</c>, another as <c>execute &lt;unnamed&gt;</c>).
/// </summary>
public sealed class PreparedStatementTests
{
    [Fact]
    public async Task A_lock_sessions_heartbeat_and_try_are_prepared_and_a_connection_string_can_turn_it_off()
    {
        await using var server = await LocalPostgresServer.StartAsync(new LocalPostgresOptions
        {
            ExtraSettings = { ["log_statement"] = "all", ["log_line_prefix"] = "%m %a [%p] " },
        });
        await using var cluster = new TestCluster(server.ConnectionString);
        var off = new NpgsqlConnectionStringBuilder(server.ConnectionString) { MaxAutoPrepare = 0 }.ConnectionString;
        var a = await cluster.StartNodeAsync("a", ["job"]);
        await cluster.Recorder.WaitStartedAsync("job", node: "a");
        var b = await cluster.StartNodeAsync("b", ["job"], connectionString: off);
        await b.WaitForStateAsync("job", SingletonState.Following);

        // Several heartbeats of both nodes, and a take-over (b's try, once a steps down).
        await WaitForAsync(() => Lines(server.LogFile, "highlander/a").Count(l => l.Contains("pg_backend_pid(), clock_timestamp()", StringComparison.Ordinal)) >= 4, "four heartbeats of a");
        await WaitForAsync(() => Lines(server.LogFile, "highlander/b").Count(l => l.Contains("pg_backend_pid(), clock_timestamp()", StringComparison.Ordinal)) >= 4, "four heartbeats of b");
        await a.RehearsedAsync(); // its rehearsal's try and release ran on its lock session: the step-down's release is a second
        var mark = cluster.Recorder.Mark();
        await a.Singletons.StepDownAsync("job");
        await cluster.Recorder.WaitStartedAsync("job", mark, node: "b");

        var lockA = Lines(server.LogFile, "highlander/a");
        // From its second run on a session, a's heartbeat is a prepared statement; so are its try and its release (run at
        // its start, in its rehearsal and at its step-down). Per session: a machine busy enough to hold a round trip past
        // the lease makes the node give its session up and open another (a new backend pid), where the first heartbeat
        // is again a first.
        var heartbeatsA = lockA.Where(l => l.Contains("pg_backend_pid(), clock_timestamp()", StringComparison.Ordinal))
            .GroupBy(Pid).ToList();
        Assert.Contains(heartbeatsA, session => session.Count() >= 2); // at least one heartbeat that must be prepared
        Assert.All(heartbeatsA, session => Assert.All(session.Skip(1), l => Assert.Contains("execute _auto", l, StringComparison.Ordinal)));
        Assert.Contains(lockA, l => l.Contains("execute _auto", StringComparison.Ordinal) && l.Contains(TryStatement, StringComparison.Ordinal));
        Assert.Contains(lockA, l => l.Contains("execute _auto", StringComparison.Ordinal) && l.Contains(ReleaseStatement, StringComparison.Ordinal));
        // And planned once each (a generic plan), not afresh at each of their first five runs: set at the session's start.
        Assert.Contains(lockA, l => l.Contains("set_config('plan_cache_mode', 'force_generic_plan', false)", StringComparison.Ordinal));

        // b's connection string set Max Auto Prepare=0: nothing of b is prepared, its take-over neither.
        var lockB = Lines(server.LogFile, "highlander/b");
        Assert.Contains(lockB, l => l.Contains(TryStatement, StringComparison.Ordinal));
        Assert.DoesNotContain(lockB, l => l.Contains("execute _auto", StringComparison.Ordinal));

        // The waiters' statements are not prepared (one long statement per wait slice).
        var waitB = Lines(server.LogFile, "highlander-wait/b");
        Assert.Contains(waitB, l => l.Contains("DO $watch$", StringComparison.Ordinal));
        Assert.DoesNotContain(waitB, l => l.Contains("execute _auto", StringComparison.Ordinal));
        cluster.Recorder.AssertNoOverlap();
    }

    // The first line of each (the server logs a statement's text as it is, over several lines).
    private const string TryStatement = "WITH c AS MATERIALIZED (SELECT clock_timestamp() AS now),";
    private const string ReleaseStatement = "WITH unlocked AS (SELECT pg_advisory_unlock(k)";

    /// <summary>The backend pid of a log line (<c>log_line_prefix</c> <c>%m %a [%p] </c>).</summary>
    private static string Pid(string line)
    {
        var start = line.IndexOf(" [", StringComparison.Ordinal) + 2;
        return line[start..line.IndexOf(']', start)];
    }

    /// <summary>The statement lines the server logged for sessions of one application name.</summary>
    private static List<string> Lines(string logFile, string applicationName)
    {
        using var stream = new FileStream(logFile, FileMode.Open, FileAccess.Read, FileShare.ReadWrite | FileShare.Delete);
        using var reader = new StreamReader(stream);
        var marker = " " + applicationName + " [";
        return reader.ReadToEnd().Split('\n')
            .Where(l => l.Contains(marker, StringComparison.Ordinal) && (l.Contains("LOG:  statement:", StringComparison.Ordinal) || l.Contains("LOG:  execute", StringComparison.Ordinal)))
            .ToList();
    }

    private static async Task WaitForAsync(Func<bool> condition, string what)
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(60);
        while (!condition())
        {
            if (DateTime.UtcNow > deadline)
            {
                throw new TimeoutException($"Not seen within 60 s: {what}");
            }

            await Task.Delay(100);
        }
    }
}
