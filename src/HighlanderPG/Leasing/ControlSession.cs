using HighlanderPG.Diagnostics;
using HighlanderPG.Fencing;
using Microsoft.Extensions.Logging;
using Npgsql;

namespace HighlanderPG.Leasing;

/// <summary>
/// The lock session's part in step-down and drain requests (docs/lease-protocol.md, "Step down and drain"): at every
/// session start it creates the control objects (with fencing on), LISTENs on the control channel and reads this
/// node's hold-offs, so that a node restarted during a drain stays drained.
/// </summary>
internal static class ControlSession
{
    /// <summary>Prepares the control side of a new session; returns this node's hold-offs (none when the objects do not exist or cannot be read).</summary>
    public static async Task<HoldOffSet> StartAsync(NpgsqlConnection connection, HighlanderOptions options, ILogger logger, CancellationToken stopping)
    {
        var schema = options.FencingSchema;
        if (options.Fencing)
        {
            try
            {
                await ControlSql.EnsureCreatedAsync(connection, schema, stopping).ConfigureAwait(false);
            }
            catch (PostgresException ex) when (ex.InvariantSeverity is "ERROR" && connection.State == System.Data.ConnectionState.Open)
            {
                // Not this role's to create (another owns the schema): the node runs on, and step-down requests reach it once a DBA ran the DDL.
                Log.ControlUnavailable(logger, schema, $"{ex.SqlState}: {ex.MessageText}");
            }
        }

        await using (var listen = new NpgsqlCommand($"LISTEN {ControlSql.Channel(schema)}", connection))
        {
            await listen.ExecuteNonQueryAsync(stopping).ConfigureAwait(false);
        }

        return await ReadAsync(connection, options, long.MaxValue, logger, stopping).ConfigureAwait(false);
    }

    /// <summary>Reads this node's hold-offs; none when the control objects do not exist, or cannot be read (logged).</summary>
    public static async Task<HoldOffSet> ReadAsync(NpgsqlConnection connection, HighlanderOptions options, long seenId, ILogger logger, CancellationToken cancellationToken)
    {
        try
        {
            if (!await ControlSql.ExistAsync(connection, options.FencingSchema, cancellationToken).ConfigureAwait(false))
            {
                return HoldOffSet.None with { TopId = 0 }; // every request made once they exist is new to this node
            }

            return await ControlSql.ReadAsync(connection, options.FencingSchema, options.NodeId, seenId, cancellationToken).ConfigureAwait(false);
        }
        catch (PostgresException ex) when (ex.InvariantSeverity is "ERROR" && connection.State == System.Data.ConnectionState.Open)
        {
            Log.ControlUnavailable(logger, options.FencingSchema, $"{ex.SqlState}: {ex.MessageText}");
            return HoldOffSet.None;
        }
    }
}
