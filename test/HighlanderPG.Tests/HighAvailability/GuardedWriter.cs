using HighlanderPG.Fencing;
using HighlanderPG.Testing;
using Microsoft.Extensions.Hosting;
using Npgsql;

namespace HighlanderPG.Tests.HighAvailability;

/// <summary>Where the guarded writers of a test write: one data source over the test's multi-host connection string.</summary>
public sealed class GuardedWrites(string connectionString) : IAsyncDisposable
{
    public const string Table = "ha_writes";

    public const string Ddl = $"CREATE TABLE {Table} (seq bigserial PRIMARY KEY, singleton text NOT NULL, epoch bigint NOT NULL, node text NOT NULL)";

    private int _committed;

    /// <summary>Each write on a new physical connection (no pooled connection to a dead primary), aimed at the primary.</summary>
    public NpgsqlDataSource DataSource { get; } = NpgsqlDataSource.Create(
        new NpgsqlConnectionStringBuilder(connectionString) { Pooling = false, Timeout = 3, HostRecheckSeconds = 1, ApplicationName = "ha-writer" }.ConnectionString);

    public int Committed => Volatile.Read(ref _committed);

    internal void CountCommit() => Interlocked.Increment(ref _committed);

    public ValueTask DisposeAsync() => DataSource.DisposeAsync();
}

/// <summary>
/// A singleton child that journals its start (with its fencing epoch as the token) and stop, and meanwhile writes a row
/// every 50 ms in a transaction guarded by its epoch (<see cref="FencingGuard"/>).
/// </summary>
public sealed class GuardedWriterService(LifeJournal journal, ILeadership leadership, GuardedWrites writes) : BackgroundService
{
    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        journal.Record(leadership.NodeId, leadership.Name, LifeKind.Started, token: leadership.FencingEpoch);
        try
        {
            while (!stoppingToken.IsCancellationRequested)
            {
                try
                {
                    await using var connection = await writes.DataSource.OpenConnectionAsync(stoppingToken);
                    await using var tx = await connection.BeginTransactionAsync(stoppingToken);
                    await leadership.AssertCurrentAsync(tx, stoppingToken);
                    await using (var insert = new NpgsqlCommand($"INSERT INTO {GuardedWrites.Table} (singleton, epoch, node) VALUES ($1, $2, $3)", connection, tx))
                    {
                        insert.Parameters.Add(new NpgsqlParameter<string> { TypedValue = leadership.Name });
                        insert.Parameters.Add(new NpgsqlParameter<long> { TypedValue = leadership.FencingEpoch!.Value });
                        insert.Parameters.Add(new NpgsqlParameter<string> { TypedValue = leadership.NodeId });
                        await insert.ExecuteNonQueryAsync(stoppingToken);
                    }

                    await tx.CommitAsync(stoppingToken);
                    writes.CountCommit();
                }
                catch (Exception ex) when (ex is NpgsqlException or StaleEpochException or TimeoutException or IOException && !stoppingToken.IsCancellationRequested)
                {
                    // The server went away or the epoch is stale: the child keeps trying until it is stopped.
                }

                await Task.Delay(50, stoppingToken);
            }
        }
        catch (OperationCanceledException) when (stoppingToken.IsCancellationRequested)
        {
        }
        finally
        {
            journal.Record(leadership.NodeId, leadership.Name, LifeKind.Stopped);
        }
    }
}
