using Npgsql;

namespace HighlanderPG.Benchmarks.Infrastructure;

/// <summary>
/// An observer session that looks at <c>pg_locks</c>: a fault is injected only once the waiter is really blocked on the
/// lock (its request is in <c>pg_locks</c>, not granted), so that every case times the same thing.
/// </summary>
/// <remarks>
/// A bigint advisory key shows as <c>classid</c> (high 32 bits), <c>objid</c> (low 32 bits), <c>objsubid = 1</c>:
/// https://www.postgresql.org/docs/current/view-pg-locks.html
/// </remarks>
internal sealed class LockProbe : IAsyncDisposable
{
    public const string Exclusive = "ExclusiveLock";
    public const string Shared = "ShareLock";

    private readonly NpgsqlConnection _connection;
    private readonly SemaphoreSlim _gate = new(1, 1);

    private LockProbe(NpgsqlConnection connection) => _connection = connection;

    public static async Task<LockProbe> OpenAsync(string connectionString, CancellationToken cancellationToken)
    {
        var connection = new NpgsqlConnection(connectionString);
        await connection.OpenAsync(cancellationToken);
        return new LockProbe(connection);
    }

    /// <summary>Waits until some session waits (not granted) for <paramref name="key"/> in <paramref name="mode"/>.</summary>
    public async Task WaitForWaiterAsync(long key, string mode, TimeSpan timeout, CancellationToken cancellationToken)
    {
        var until = DateTime.UtcNow + timeout;
        while (await CountAsync(key, mode, granted: false, cancellationToken) == 0)
        {
            if (DateTime.UtcNow > until)
            {
                throw new TimeoutException($"No session was seen waiting for advisory lock {key} ({mode}) within {timeout.TotalSeconds:0} s.");
            }

            await Task.Delay(5, cancellationToken);
        }
    }

    /// <summary>
    /// Waits until a session named <paramref name="applicationName"/> is blocked waiting for a heavyweight lock
    /// (<c>pg_stat_activity.wait_event_type = 'Lock'</c>), whichever key it waits for.
    /// </summary>
    public async Task WaitForBlockedAsync(string applicationName, TimeSpan timeout, CancellationToken cancellationToken)
    {
        var until = DateTime.UtcNow + timeout;
        while (true)
        {
            await _gate.WaitAsync(cancellationToken);
            try
            {
                await using var cmd = new NpgsqlCommand(
                    "SELECT count(*) FROM pg_catalog.pg_stat_activity WHERE application_name = $1 AND wait_event_type = 'Lock'", _connection);
                cmd.Parameters.Add(new NpgsqlParameter<string> { TypedValue = applicationName });
                if ((long)(await cmd.ExecuteScalarAsync(cancellationToken))! > 0)
                {
                    return;
                }
            }
            finally
            {
                _gate.Release();
            }

            if (DateTime.UtcNow > until)
            {
                throw new TimeoutException($"No session '{applicationName}' was seen waiting for a lock within {timeout.TotalSeconds:0} s.");
            }

            await Task.Delay(5, cancellationToken);
        }
    }

    /// <summary>Waits until nobody holds <paramref name="key"/> (exclusively).</summary>
    public async Task WaitUntilFreeAsync(long key, TimeSpan timeout, CancellationToken cancellationToken)
    {
        var until = DateTime.UtcNow + timeout;
        while (await CountAsync(key, Exclusive, granted: true, cancellationToken) > 0)
        {
            if (DateTime.UtcNow > until)
            {
                throw new TimeoutException($"Advisory lock {key} was still held after {timeout.TotalSeconds:0} s.");
            }

            await Task.Delay(20, cancellationToken);
        }
    }

    /// <summary>The state and query of the sessions whose <c>application_name</c> is <paramref name="applicationName"/>.</summary>
    public async Task<IReadOnlyList<(string? State, string? Query)>> ActivityAsync(string applicationName, CancellationToken cancellationToken)
    {
        await _gate.WaitAsync(cancellationToken);
        try
        {
            await using var cmd = new NpgsqlCommand("SELECT state, query FROM pg_catalog.pg_stat_activity WHERE application_name = $1", _connection);
            cmd.Parameters.Add(new NpgsqlParameter<string> { TypedValue = applicationName });
            await using var reader = await cmd.ExecuteReaderAsync(cancellationToken);
            var rows = new List<(string?, string?)>();
            while (await reader.ReadAsync(cancellationToken))
            {
                rows.Add((reader.IsDBNull(0) ? null : reader.GetString(0), reader.IsDBNull(1) ? null : reader.GetString(1)));
            }

            return rows;
        }
        finally
        {
            _gate.Release();
        }
    }

    /// <summary>How long the server has been up.</summary>
    public async Task<TimeSpan> ServerUptimeAsync(CancellationToken cancellationToken)
    {
        await _gate.WaitAsync(cancellationToken);
        try
        {
            await using var cmd = new NpgsqlCommand("SELECT extract(epoch from clock_timestamp() - pg_postmaster_start_time())::float8", _connection);
            return TimeSpan.FromSeconds((double)(await cmd.ExecuteScalarAsync(cancellationToken))!);
        }
        finally
        {
            _gate.Release();
        }
    }

    private async Task<long> CountAsync(long key, string mode, bool granted, CancellationToken cancellationToken)
    {
        await _gate.WaitAsync(cancellationToken);
        try
        {
            await using var cmd = new NpgsqlCommand(
                "SELECT count(*) FROM pg_catalog.pg_locks l " +
                "WHERE l.locktype = 'advisory' AND l.database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database()) " +
                "AND l.classid::bigint = $1 AND l.objid::bigint = $2 AND l.objsubid = 1 AND l.mode = $3 AND l.granted = $4",
                _connection);
            cmd.Parameters.Add(new NpgsqlParameter<long> { TypedValue = (long)((ulong)key >> 32) });
            cmd.Parameters.Add(new NpgsqlParameter<long> { TypedValue = key & 0xFFFF_FFFFL });
            cmd.Parameters.Add(new NpgsqlParameter<string> { TypedValue = mode });
            cmd.Parameters.Add(new NpgsqlParameter<bool> { TypedValue = granted });
            return (long)(await cmd.ExecuteScalarAsync(cancellationToken))!;
        }
        finally
        {
            _gate.Release();
        }
    }

    public async ValueTask DisposeAsync()
    {
        await _connection.DisposeAsync();
        _gate.Dispose();
    }
}
