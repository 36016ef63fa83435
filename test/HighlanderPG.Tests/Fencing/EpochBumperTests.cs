using HighlanderPG.Fencing;
using HighlanderPG.Tests.Infrastructure;
using Npgsql;

namespace HighlanderPG.Tests.Fencing;

/// <summary>
/// The one-key bump (EpochBumper.BumpAsync) on its own: one batch that the server runs as one transaction, its settings
/// local to it, its move and its bump committed or rolled back together.
/// </summary>
[Collection(SharedServer.Name)]
public sealed class EpochBumperTests(PostgresFixture pg)
{
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(30);

    private async Task<(NpgsqlConnection Connection, HighlanderOptions Options)> SetUpAsync()
    {
        var options = new HighlanderOptions
        {
            ConnectionString = pg.ConnectionString,
            Fencing = true,
            FencingSchema = "b_" + Guid.NewGuid().ToString("N")[..10],
            Namespace = "ns-" + Guid.NewGuid().ToString("N")[..8],
            NodeId = "bumper",
        };
        var connection = new NpgsqlConnection(pg.ConnectionString);
        await connection.OpenAsync();
        await FencingSql.EnsureCreatedAsync(connection, options.FencingSchema, CancellationToken.None);
        return (connection, options);
    }

    private static async Task<List<(long Key, long Epoch)>> RowsAsync(NpgsqlConnection connection, HighlanderOptions options, string name)
    {
        await using var cmd = new NpgsqlCommand($"SELECT key, epoch FROM {options.FencingSchema}.leases WHERE namespace = $1 AND name = $2 ORDER BY key", connection);
        cmd.Parameters.Add(new NpgsqlParameter<string> { TypedValue = options.Namespace });
        cmd.Parameters.Add(new NpgsqlParameter<string> { TypedValue = name });
        var rows = new List<(long, long)>();
        await using var reader = await cmd.ExecuteReaderAsync();
        while (await reader.ReadAsync())
        {
            rows.Add((reader.GetInt64(0), reader.GetInt64(1)));
        }

        return rows;
    }

    private static async Task<string> ShowAsync(NpgsqlConnection connection, string setting)
    {
        await using var cmd = new NpgsqlCommand($"SHOW {setting}", connection);
        return (string)(await cmd.ExecuteScalarAsync())!;
    }

    [Fact]
    public async Task Each_bump_commits_the_next_epoch_and_a_moved_name_takes_its_epoch_along_to_the_new_key()
    {
        var (connection, options) = await SetUpAsync();
        await using var _ = connection;

        Assert.Equal(1, await EpochBumper.BumpAsync(connection, options, 101, "job"));
        Assert.Equal(2, await EpochBumper.BumpAsync(connection, options, 101, "job"));
        Assert.Equal([(101L, 2L)], await RowsAsync(connection, options, "job"));

        // The name moves to key 202: the old row goes, its epoch comes along, in the same commit.
        Assert.Equal(3, await EpochBumper.BumpAsync(connection, options, 202, "job"));
        Assert.Equal([(202L, 3L)], await RowsAsync(connection, options, "job"));

        // Committed (seen from another session), and the settings were the transaction's only.
        await using var other = new NpgsqlConnection(pg.ConnectionString);
        await other.OpenAsync();
        Assert.Equal([(202L, 3L)], await RowsAsync(other, options, "job"));
        Assert.Equal("0", await ShowAsync(connection, "lock_timeout"));
    }

    [Fact]
    public async Task A_bump_that_finds_the_row_held_gives_up_with_55P03_and_rolls_back_the_move_with_it()
    {
        var (connection, options) = await SetUpAsync();
        await using var _ = connection;
        Assert.Equal(1, await EpochBumper.BumpAsync(connection, options, 301, "job"));
        Assert.Equal(1, await EpochBumper.BumpAsync(connection, options, 302, "other"));

        // Another transaction holds key 302's row, as an old leader's guarded transaction does.
        await using var holder = new NpgsqlConnection(pg.ConnectionString);
        await holder.OpenAsync();
        await using var tx = await holder.BeginTransactionAsync();
        await using (var share = new NpgsqlCommand($"SELECT 1 FROM {options.FencingSchema}.leases WHERE key = 302 FOR SHARE", holder, tx))
        {
            Assert.Equal(1, await share.ExecuteScalarAsync());
        }

        // "job" moving to key 302 needs that row: the bump's own lock_timeout ends its wait (it does not block the
        // session until the holder ends; the bound here only turns a hang into a failure).
        var refused = await Assert.ThrowsAsync<PostgresException>(() => EpochBumper.BumpAsync(connection, options, 302, "job").WaitAsync(Bound));
        Assert.Equal(PostgresErrorCodes.LockNotAvailable, refused.SqlState);

        // The move was rolled back with the bump; the session is usable and its settings are back.
        Assert.Equal([(301L, 1L)], await RowsAsync(connection, options, "job"));
        Assert.Equal([(302L, 1L)], await RowsAsync(connection, options, "other"));
        Assert.Equal("0", await ShowAsync(connection, "lock_timeout"));

        await tx.RollbackAsync();
        Assert.Equal(2, await EpochBumper.BumpAsync(connection, options, 302, "other"));
    }
}
