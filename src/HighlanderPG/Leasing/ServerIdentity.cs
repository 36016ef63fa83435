using System.Globalization;
using Npgsql;

namespace HighlanderPG.Leasing;

/// <summary>
/// Which server incarnation a lock session is on, from what any role may read: the postmaster's start time (always), the
/// database cluster's system identifier (<c>pg_control_system()</c>, executable by every role by default), the current
/// timeline (the first 8 hex digits of <c>pg_walfile_name(pg_current_wal_lsn())</c>, exact at once after a promotion,
/// unlike <c>pg_control_checkpoint()</c>'s, which waits for the next checkpoint) and the address it answered on (for logs).
/// See docs/lease-protocol.md, "Lock-delay after a failover".
/// </summary>
/// <param name="SystemIdentifier">The cluster's system identifier, or <see langword="null"/> when the role may not read it.</param>
/// <param name="Timeline">The server's current timeline, or <see langword="null"/> when it could not be read.</param>
/// <param name="PostmasterStart">The postmaster's start (<c>pg_postmaster_start_time()</c>), in UTC.</param>
/// <param name="Address">The address and port the server answered on (<c>inet_server_addr()</c>, <c>inet_server_port()</c>); <see langword="null"/> over a unix socket.</param>
internal sealed record ServerIdentity(long? SystemIdentifier, int? Timeline, DateTime PostmasterStart, string? Address)
{
    /// <summary>Everything; run on a primary only (<c>pg_walfile_name</c> fails during recovery).</summary>
    internal const string FullQuery =
        "SELECT (SELECT system_identifier FROM pg_control_system()), pg_walfile_name(pg_current_wal_lsn()), " +
        "pg_postmaster_start_time(), host(inet_server_addr()) || ':' || inet_server_port()";

    /// <summary>What every role may read on any server, for when <see cref="FullQuery"/> fails (a revoked function).</summary>
    internal const string MinimalQuery =
        "SELECT NULL::bigint, NULL::text, pg_postmaster_start_time(), host(inet_server_addr()) || ':' || inet_server_port()";

    /// <summary>Reads the identity; when the full query is refused (privileges, a missing function), the minimal one.</summary>
    /// <returns>The identity, and why the full query failed (<see langword="null"/> when it did not).</returns>
    public static async Task<(ServerIdentity Identity, string? Partial)> ReadAsync(NpgsqlConnection connection, CancellationToken cancellationToken)
    {
        try
        {
            return (await ReadAsync(connection, FullQuery, cancellationToken).ConfigureAwait(false), null);
        }
        catch (PostgresException ex) when (ex.SqlState is PostgresErrorCodes.InsufficientPrivilege or PostgresErrorCodes.UndefinedFunction or PostgresErrorCodes.FeatureNotSupported or PostgresErrorCodes.ObjectNotInPrerequisiteState)
        {
            return (await ReadAsync(connection, MinimalQuery, cancellationToken).ConfigureAwait(false), $"{ex.SqlState}: {ex.MessageText}");
        }
    }

    private static async Task<ServerIdentity> ReadAsync(NpgsqlConnection connection, string sql, CancellationToken cancellationToken)
    {
        await using var cmd = new NpgsqlCommand(sql, connection);
        await using var reader = await cmd.ExecuteReaderAsync(cancellationToken).ConfigureAwait(false);
        await reader.ReadAsync(cancellationToken).ConfigureAwait(false);
        return new ServerIdentity(
            reader.IsDBNull(0) ? null : reader.GetInt64(0),
            reader.IsDBNull(1) ? null : ParseTimeline(reader.GetString(1)),
            reader.GetFieldValue<DateTime>(2),
            reader.IsDBNull(3) ? null : reader.GetString(3));
    }

    /// <summary>The timeline of a WAL file name (<c>TTTTTTTTXXXXXXXXYYYYYYYY</c>, hex), or <see langword="null"/>.</summary>
    internal static int? ParseTimeline(string walFileName) =>
        walFileName.Length >= 8 && int.TryParse(walFileName.AsSpan(0, 8), NumberStyles.AllowHexSpecifier, CultureInfo.InvariantCulture, out var timeline)
            ? timeline
            : null;

    /// <summary>
    /// How <paramref name="current"/> differs from the server of the node's previous session, or <see langword="null"/>
    /// when it is the same server incarnation (or there was no previous session). Any difference counts: another cluster
    /// (system identifier), a promotion (timeline), another server or a restart (postmaster start). Values one side could
    /// not read are not compared.
    /// </summary>
    public static string? Change(ServerIdentity? previous, ServerIdentity current)
    {
        if (previous is null)
        {
            return null;
        }

        if (previous.SystemIdentifier is { } a && current.SystemIdentifier is { } b && a != b)
        {
            return $"another database cluster (system identifier {a} then {b})";
        }

        if (previous.Timeline is { } t1 && current.Timeline is { } t2 && t1 != t2)
        {
            return $"a new timeline ({t1} then {t2}): a standby was promoted";
        }

        if (previous.PostmasterStart != current.PostmasterStart)
        {
            return previous.Address == current.Address
                ? $"the server restarted (postmaster started {Format(previous.PostmasterStart)} then {Format(current.PostmasterStart)})"
                : $"another server (postmaster started {Format(previous.PostmasterStart)} then {Format(current.PostmasterStart)})";
        }

        return null;
    }

    /// <summary>Whether <see cref="Change"/>'s difference is only a restart of the server at the same address, same cluster and timeline.</summary>
    public static bool IsRestartInPlace(ServerIdentity previous, ServerIdentity current) =>
        previous.Address == current.Address
        && previous.SystemIdentifier == current.SystemIdentifier
        && previous.Timeline == current.Timeline
        && previous.PostmasterStart != current.PostmasterStart;

    /// <inheritdoc/>
    public override string ToString() =>
        $"{Address ?? "(unix socket)"}, system identifier {SystemIdentifier?.ToString(CultureInfo.InvariantCulture) ?? "unknown"}, timeline {Timeline?.ToString(CultureInfo.InvariantCulture) ?? "unknown"}, started {Format(PostmasterStart)}";

    private static string Format(DateTime time) => time.ToUniversalTime().ToString("yyyy-MM-dd HH:mm:ss.ffffff'Z'", CultureInfo.InvariantCulture);
}
