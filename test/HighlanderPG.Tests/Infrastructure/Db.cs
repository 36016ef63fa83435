using Npgsql;

namespace HighlanderPG.Tests.Infrastructure;

/// <summary>Plain SQL against the test server, from a connection of the test's own (not a node's).</summary>
public static class Db
{
    public static async Task<T?> ScalarAsync<T>(string connectionString, string sql, params object[] parameters)
    {
        await using var connection = new NpgsqlConnection(new NpgsqlConnectionStringBuilder(connectionString) { Pooling = false }.ConnectionString);
        await connection.OpenAsync();
        await using var cmd = new NpgsqlCommand(sql, connection);
        foreach (var p in parameters)
        {
            cmd.Parameters.Add(new NpgsqlParameter { Value = p });
        }

        var result = await cmd.ExecuteScalarAsync();
        return result is DBNull or null ? default : (T)result;
    }

    /// <summary>The backend pid that holds <paramref name="key"/> as an exclusive advisory lock, or null.</summary>
    public static Task<int?> HolderPidAsync(string connectionString, long key) =>
        ScalarAsync<int?>(connectionString, """
            SELECT pid FROM pg_locks
            WHERE locktype = 'advisory' AND granted AND mode = 'ExclusiveLock' AND objsubid = 1
              AND ((classid::bigint << 32) | objid::bigint) = $1
            """, key);

    public static async Task TerminateAsync(string connectionString, int pid) =>
        Assert.True(await ScalarAsync<bool>(connectionString, "SELECT pg_terminate_backend($1)", pid), $"could not terminate backend {pid}");
}
