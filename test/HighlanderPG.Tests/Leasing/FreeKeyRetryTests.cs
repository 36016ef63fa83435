using System.Diagnostics;
using HighlanderPG.Leasing;
using HighlanderPG.Tests.Infrastructure;
using Npgsql;

namespace HighlanderPG.Tests.Leasing;

/// <summary>
/// A try can fail on a key nobody holds: something held it for a moment in shared mode (a follower's waiter, woken by
/// the same release, holds it until its next statement). The holder query then finds it free, and nothing else would
/// tell the node when it can be taken: it is tried again, at once and then at growing intervals, not at the next heartbeat.
/// </summary>
[Collection(SharedServer.Name)]
public sealed class FreeKeyRetryTests(PostgresFixture pg)
{
    private static readonly DateTimeOffset Now = new(2026, 12, 2, 12, 0, 0, TimeSpan.Zero);

    [Fact]
    public void A_wanted_key_found_held_by_nobody_is_tried_again_and_its_streak_ends_when_it_is_taken_or_seen_held()
    {
        var ledger = new KeyLedger();
        ledger.AddWant(1, "free");
        ledger.AddWant(2, "held");
        Assert.Equal([1L, 2L], ledger.TakeWork(heartbeatDue: false, lockDelayPassed: true, now: 0).ToTry.Order());

        // Both tries failed: 2 is held by another node, 1 by nobody.
        var other = new LeaderInfo("other", 7, "highlander/other", null, null);
        ledger.UpdateHolders([1L, 2L], new() { [2L] = other });
        Assert.Equal([1L], ledger.TakeWork(heartbeatDue: false, lockDelayPassed: true, now: 0).ToTry);
        Assert.Equal(1, ledger.FoundFreeStreak([1L, 2L]));
        Assert.Equal(0, ledger.FoundFreeStreak([2L]));

        // That try failed too, and the next query still finds nobody: tried again, the streak grows.
        ledger.UpdateHolders([1L], []);
        Assert.Equal([1L], ledger.TakeWork(heartbeatDue: false, lockDelayPassed: true, now: 0).ToTry);
        Assert.Equal(2, ledger.FoundFreeStreak([1L]));

        // Seen held: an ordinary follower again (watched, not retried), and the streak is over.
        ledger.UpdateHolders([1L], new() { [1L] = other });
        Assert.Empty(ledger.TakeWork(heartbeatDue: false, lockDelayPassed: true, now: 0).ToTry);
        Assert.Equal(0, ledger.FoundFreeStreak([1L]));

        // A key this node does not want is never tried for it.
        ledger.UpdateHolders([3L], []);
        Assert.Empty(ledger.TakeWork(heartbeatDue: false, lockDelayPassed: true, now: 0).ToTry);
        Assert.Equal(0, ledger.FoundFreeStreak([3L]));

        // Taken: over too.
        ledger.UpdateHolders([1L], []);
        Assert.Equal(1, ledger.FoundFreeStreak([1L]));
        ledger.NewGeneration();
        Assert.Single(ledger.Taken([1L], fencing: false, Now));
        Assert.Equal(0, ledger.FoundFreeStreak([1L]));

    }

    [Fact]
    public void The_next_query_after_a_key_found_free_comes_later_each_time_up_to_a_second()
    {
        Assert.Equal(LockSession.HolderQueryInterval, LockSession.FreeRetryDelay(0));
        var delays = Enumerable.Range(0, 12).Select(LockSession.FreeRetryDelay).ToList();
        for (var i = 1; i < delays.Count; i++)
        {
            Assert.True(delays[i] >= delays[i - 1], $"the delay after {i} found-free queries shrank: {delays[i]} < {delays[i - 1]}");
        }

        Assert.Equal(TimeSpan.FromMilliseconds(100), delays[1]);
        Assert.Equal(LockSession.MaxFreeRetryDelay, delays[^1]);
        Assert.Equal(LockSession.MaxFreeRetryDelay, LockSession.FreeRetryDelay(int.MaxValue));
    }

    [Fact]
    public void After_a_lost_race_the_question_who_won_waits_longer_than_after_a_start_or_a_key_found_free()
    {
        Assert.Equal(LockSession.HolderQueryInterval, LockSession.HolderQueryDelay(0, lostRace: false));
        Assert.Equal(LockSession.LostRaceHolderDelay, LockSession.HolderQueryDelay(0, lostRace: true));
        Assert.True(LockSession.LostRaceHolderDelay > LockSession.HolderQueryInterval);
        // A key found free (a momentary shared lock) keeps its own, quicker spacing, race or not.
        Assert.Equal(LockSession.FreeRetryDelay(1), LockSession.HolderQueryDelay(1, lostRace: true));
        Assert.Equal(LockSession.FreeRetryDelay(3), LockSession.HolderQueryDelay(3, lostRace: false));
    }

    [Fact]
    public async Task A_key_free_but_held_in_shared_mode_for_a_while_is_taken_once_let_go_without_waiting_for_a_heartbeat()
    {
        await using var cluster = new TestCluster(pg.ConnectionString);
        var key = SingletonKey.Derive(cluster.Namespace, "job");

        // Held in shared mode, as a waiter holds it for a moment after a release: invisible to the holder query.
        await using var shared = new NpgsqlConnection(pg.ConnectionString);
        await shared.OpenAsync();
        await using (var take = new NpgsqlCommand("SELECT pg_advisory_lock_shared($1)", shared))
        {
            take.Parameters.Add(new NpgsqlParameter<long> { TypedValue = key });
            await take.ExecuteNonQueryAsync();
        }

        // Heartbeats 5 s apart: the node's first try (at its start) fails, and its first heartbeat is 5 s later. The
        // lock delay after a server start is at least the lease: the server must have been up that long already.
        var lease = TimeSpan.FromSeconds(15);
        var heartbeat = TimeSpan.FromSeconds(5);
        var uptime = TimeSpan.FromSeconds((await Db.ScalarAsync<double>(pg.ConnectionString, "SELECT extract(epoch FROM now() - pg_postmaster_start_time())::float8")));
        if (uptime < lease)
        {
            await Task.Delay(lease - uptime + TimeSpan.FromSeconds(1));
        }

        var sinceStart = Stopwatch.StartNew();
        var node = await cluster.StartNodeAsync("taker", configure: o =>
        {
            o.LeaseDuration = lease;
            o.HeartbeatInterval = heartbeat;
            o.LockDelayAfterServerStart = lease;
        });

        // The node tried the key and failed (its try statement, or the holder query after it, is done).
        var watch = Stopwatch.StartNew();
        while (await Db.ScalarAsync<string>(pg.ConnectionString, """
            SELECT query FROM pg_stat_activity
            WHERE application_name = 'highlander/taker' AND state = 'idle' AND (query LIKE '%pg_try_advisory_lock%' OR query LIKE '%pg_locks%')
            """) is null)
        {
            Assert.True(watch.Elapsed < TimeSpan.FromSeconds(20), "the node never tried the key\n" + cluster.Logs.Describe());
            await Task.Delay(20);
        }

        Assert.Equal(SingletonState.Following, node.Singletons.Get("job")!.State);
        Assert.Null(node.Singletons.Get("job")!.Leader);
        Assert.DoesNotContain(cluster.Recorder.Events, e => e.Node == "taker");

        await using (var release = new NpgsqlCommand("SELECT pg_advisory_unlock_shared($1)", shared))
        {
            release.Parameters.Add(new NpgsqlParameter<long> { TypedValue = key });
            Assert.True((bool)(await release.ExecuteScalarAsync())!);
        }

        // Taken through a retry, before the node's first heartbeat: nothing else could have told the node (no release
        // announced, no holder to watch). Without the retry it is taken at that heartbeat, after this wait has given up.
        var beforeHeartbeat = heartbeat - sinceStart.Elapsed;
        Assert.True(beforeHeartbeat > TimeSpan.FromSeconds(2), $"the test itself took {sinceStart.Elapsed} to get here");
        await cluster.Recorder.WaitStartedAsync("job", node: "taker", timeout: beforeHeartbeat);
        Assert.Equal(SingletonState.Leading, (await node.WaitForStateAsync("job", SingletonState.Leading)).State);
    }
}
