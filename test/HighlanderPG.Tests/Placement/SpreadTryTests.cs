using HighlanderPG.Leasing;
using HighlanderPG.Tests.Infrastructure;
using Npgsql;

namespace HighlanderPG.Tests.Placement;

/// <summary>
/// The try statement's limit (docs/lease-protocol.md, "Placement"): the limited keys are tried in array order until the
/// limit is reached, and the keys after that are not tried at all (a filtered scan under LIMIT stops at the limit).
/// </summary>
[Collection(SharedServer.Name)]
public sealed class SpreadTryTests(PostgresFixture pg)
{
    [Fact]
    public async Task A_limited_try_takes_exactly_n_free_keys_in_order_and_leaves_the_rest_untried()
    {
        var k = Enumerable.Range(0, 10).Select(i => Random.Shared.NextInt64(1, long.MaxValue / 2) * 2 + i).ToArray();
        await using var other = new NpgsqlConnection(pg.ConnectionString);
        await other.OpenAsync();
        Assert.True(await TryAsync(other, k[1]));

        await using var connection = new NpgsqlConnection(pg.ConnectionString);
        await connection.OpenAsync();
        var result = await LockProtocol.TryLockAsync(connection, [k[6], k[7]], [k[0], k[1], k[2], k[3], k[4], k[5]], 3, null, _ => { });

        // Every unlimited key, then the first three free limited ones (k1 is held elsewhere), in that order.
        Assert.False(result.Refused);
        Assert.Equal([k[6], k[7], k[0], k[2], k[3]], result.Got);

        // k4 and k5 were never tried: another session takes them at once; k0 is this session's.
        Assert.True(await TryAsync(other, k[4]));
        Assert.True(await TryAsync(other, k[5]));
        Assert.False(await TryAsync(other, k[0]));
    }

    [Fact]
    public async Task A_limit_of_zero_tries_no_limited_key_and_an_unlimited_try_is_unchanged()
    {
        var k = Enumerable.Range(0, 4).Select(i => Random.Shared.NextInt64(1, long.MaxValue / 2) * 2 + i).ToArray();
        await using var connection = new NpgsqlConnection(pg.ConnectionString);
        await connection.OpenAsync();
        var none = await LockProtocol.TryLockAsync(connection, [], [k[0], k[1]], 0, null, _ => { });
        Assert.Empty(none.Got);

        var every = await LockProtocol.TryLockAsync(connection, [k[0], k[1], k[2], k[3]], null, _ => { });
        Assert.Equal(k.Order(), every.Got.Order());

        // A refused try (the server's clock past the bound) takes nothing, limited or not.
        await using var second = new NpgsqlConnection(pg.ConnectionString);
        await second.OpenAsync();
        var refused = await LockProtocol.TryLockAsync(second, [k[0] + 100], [k[1] + 100], 1, DateTime.UtcNow.AddHours(-1), _ => { });
        Assert.True(refused.Refused);
        Assert.Empty(refused.Got);
    }

    private static async Task<bool> TryAsync(NpgsqlConnection connection, long key)
    {
        await using var cmd = new NpgsqlCommand("SELECT pg_try_advisory_lock($1)", connection);
        cmd.Parameters.Add(new NpgsqlParameter<long> { TypedValue = key });
        return (bool)(await cmd.ExecuteScalarAsync())!;
    }
}
