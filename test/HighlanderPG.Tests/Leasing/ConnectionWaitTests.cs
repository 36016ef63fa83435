using System.Diagnostics;
using HighlanderPG.Leasing;
using HighlanderPG.Tests.Infrastructure;
using Npgsql;

namespace HighlanderPG.Tests.Leasing;

[Collection(SharedServer.Name)]
public sealed class ConnectionWaitTests(PostgresFixture pg)
{
    /// <summary>
    /// Npgsql 10 loses a cancellation that lands just as its wait begins, and the wait then lasts until the server sends
    /// something (docs/lease-protocol.md, "Waiting between round trips"): here, no notification ever comes, so such a wait
    /// would never end. Thousands of waits, each cancelled 0-200 µs after it began (where the race lies): every one ends,
    /// with the cancellation. With Npgsql's own wait in place of this one, the test failed in 3 runs of 3 (a wait still blocked after 10 s).
    /// </summary>
    [Fact]
    public async Task A_wait_cancelled_as_it_begins_always_ends()
    {
        await using var connection = new NpgsqlConnection(pg.ConnectionString);
        await connection.OpenAsync();
        var random = new Random(20261202);
        var bound = TimeSpan.FromSeconds(10); // a hundred slices: a wait still running then was not woken by its cancellation
        for (var i = 0; i < 4_000; i++)
        {
            using var cts = new CancellationTokenSource();
            var after = random.Next(0, 200) * Stopwatch.Frequency / 1_000_000;
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
            await Assert.ThrowsAnyAsync<OperationCanceledException>(() => wait);
            await canceller;
        }

        // The connection is still usable after all of them.
        await using var command = new NpgsqlCommand("SELECT 1", connection);
        Assert.Equal(1, await command.ExecuteScalarAsync());
    }
}
