using System.Diagnostics;
using HighlanderPG.Leasing;
using HighlanderPG.Tests.Infrastructure;
using Npgsql;

namespace HighlanderPG.Tests.Leasing;

/// <summary>
/// Alone (not in parallel with other tests): its canceller threads spin, and thousands of waits keep a core busy for
/// seconds, which would starve the lease timings of tests running beside it. A throwaway server of its own.
/// </summary>
[Collection(ConnectionWaitCollection.Name)]
public sealed class ConnectionWaitTests
{
    /// <summary>
    /// Npgsql 10 loses a cancellation that lands just as its wait begins, and the wait then lasts until the server sends
    /// something (docs/lease-protocol.md, "Waiting between round trips"): here, no notification ever comes, so such a wait
    /// would never end. 30,000 waits, each cancelled 0-150 µs after it began (where the race lies): every one ends, with
    /// the cancellation, and leaves the connection usable. With Npgsql's own wait in place of this one, the test failed in
    /// 3 runs of 3 (a wait still blocked after 10 s; the race struck about once in 10,000 waits).
    /// </summary>
    [Fact]
    public async Task A_wait_cancelled_as_it_begins_always_ends()
    {
        // Unpooled, as every session that waits is: a pooled connection just taken from the pool has its reset still to
        // be read, and Npgsql breaks a connection whose reset is interrupted by a cancellation (the sessions that wait
        // have always run a statement first, and are unpooled anyway).
        await using var server = await HighlanderPG.Testing.LocalPostgresServer.StartAsync();
        await using var connection = new NpgsqlConnection(new NpgsqlConnectionStringBuilder(server.ConnectionString) { Pooling = false }.ConnectionString);
        await connection.OpenAsync();
        var random = new Random(20261202);
        var bound = TimeSpan.FromSeconds(10); // a hundred slices: a wait still running then was not woken by its cancellation
        for (var i = 0; i < 30_000; i++)
        {
            using var cts = new CancellationTokenSource();
            var after = random.Next(0, 150) * Stopwatch.Frequency / 1_000_000;
            var begun = Stopwatch.GetTimestamp();
            var canceller = Task.Run(() =>
            {
                while (Stopwatch.GetTimestamp() - begun < after)
                {
                    Thread.SpinWait(10);
                }

                cts.Cancel();
            });
            var wait = ConnectionWait.UntilNotifiedAsync(connection, cts.Token);
            var ended = await Task.WhenAny(wait, Task.Delay(bound));
            Assert.True(ended == wait, $"wait {i} (cancelled {after * 1_000_000 / Stopwatch.Frequency} µs after it began) had not ended {bound.TotalSeconds} s later");
            var cancelled = await Assert.ThrowsAnyAsync<OperationCanceledException>(() => wait);
            await canceller;
            Assert.True(connection.FullState == System.Data.ConnectionState.Open, $"wait {i} left the connection {connection.FullState}: {cancelled}");
        }

        // The connection is still usable after all of them.
        await using var command = new NpgsqlCommand("SELECT 1", connection);
        Assert.Equal(1, await command.ExecuteScalarAsync());
    }
}

/// <summary>The connection wait test's own collection: not run in parallel with any other test.</summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class ConnectionWaitCollection
{
    public const string Name = "connection wait stress (alone)";
}
