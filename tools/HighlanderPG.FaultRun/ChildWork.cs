using System.Globalization;
using HighlanderPG.Fencing;
using Npgsql;

namespace HighlanderPG.FaultRun;

/// <summary>
/// What every singleton's child does, in a library node or as the command of <c>highlander run</c>: records its start
/// (with the kernel-lock witness), a tick every 100 ms and its stop in the history, and writes guarded rows (a
/// transaction calling <c>assert_epoch</c>, one in four held open 300-900 ms, announced as "intx") and unguarded rows.
/// </summary>
internal static class ChildWork
{
    public static readonly TimeSpan Tick = TimeSpan.FromMilliseconds(100);

    public static async Task RunAsync(HistoryWriter history, NpgsqlDataSource data, string lockDirectory, string name, long epoch, string @namespace, CancellationToken stop)
    {
        var lockPath = Path.Combine(lockDirectory, name + ".lock");
        var witness = TryLock(lockPath);
        history.Write("start", name, epoch, witness is null ? "flock-taken" : "flock-free");
        var writerStop = new CancellationTokenSource();
        var writer = Task.Run(() => WriteLoopAsync(history, data, name, epoch, @namespace, writerStop.Token), CancellationToken.None);
        try
        {
            while (!stop.IsCancellationRequested)
            {
                history.Write("tick", name, epoch, DateTimeOffset.UtcNow.ToUnixTimeMilliseconds().ToString(CultureInfo.InvariantCulture));
                if (witness is null && (witness = TryLock(lockPath)) is not null)
                {
                    history.Write("flock", name, epoch);
                }
                try
                {
                    await Task.Delay(Tick, stop);
                }
                catch (OperationCanceledException)
                {
                    break;
                }
            }
        }
        finally
        {
            // Not awaited: a cancellation callback must never hold the stop. A write hung on a cut-off connection is
            // abandoned after 100 ms (it ends at its command timeout): the stop must fit the node's stop budget.
            _ = Task.Run(writerStop.Cancel, CancellationToken.None);
            await Task.WhenAny(writer, Task.Delay(100, CancellationToken.None));
            history.Write("stop", name, epoch);
            witness?.Dispose();
        }
    }

    private static async Task WriteLoopAsync(HistoryWriter history, NpgsqlDataSource data, string name, long epoch, string @namespace, CancellationToken stop)
    {
        var random = new Random(HashCode.Combine(name, epoch, Environment.ProcessId));
        while (!stop.IsCancellationRequested)
        {
            try
            {
                await Task.Delay(TimeSpan.FromMilliseconds(random.Next(1500, 4500)), stop);
                await using (var conn = await data.OpenConnectionAsync(CancellationToken.None))
                {
                    await using var tx = await conn.BeginTransactionAsync(CancellationToken.None);
                    await FencingGuard.AssertEpochAsync(tx, name, epoch, @namespace, cancellationToken: CancellationToken.None);
                    var hold = random.Next(4) == 0;
                    if (hold)
                    {
                        history.Write("intx", name, epoch);
                        await Task.Delay(TimeSpan.FromMilliseconds(random.Next(300, 900)), stop);
                    }

                    await InsertAsync(conn, tx, "guarded", name, epoch, history);
                    await tx.CommitAsync(CancellationToken.None);
                    if (hold)
                    {
                        history.Write("outtx", name, epoch);
                    }
                }

                await using (var conn = await data.OpenConnectionAsync(CancellationToken.None))
                {
                    if (stop.IsCancellationRequested)
                    {
                        return;
                    }

                    await InsertAsync(conn, null, "unguarded", name, epoch, history);
                }
            }
            catch (OperationCanceledException) when (stop.IsCancellationRequested)
            {
                return;
            }
            catch (StaleEpochException)
            {
                history.Write("fenced", name, epoch);
            }
            catch (Exception ex) when (ex is NpgsqlException or InvalidOperationException or TimeoutException or IOException or OperationCanceledException)
            {
                // The database is down or cut off: try again later.
            }
        }
    }

    private static async Task InsertAsync(NpgsqlConnection conn, NpgsqlTransaction? tx, string table, string name, long epoch, HistoryWriter history)
    {
        await using var cmd = new NpgsqlCommand($"INSERT INTO faultrun.{table} (singleton, epoch, host, node, pid, mono) VALUES ($1, $2, $3, $4, $5, $6)", conn, tx);
        cmd.Parameters.Add(new NpgsqlParameter<string> { TypedValue = name });
        cmd.Parameters.Add(new NpgsqlParameter<long> { TypedValue = epoch });
        cmd.Parameters.Add(new NpgsqlParameter<string> { TypedValue = history.Host });
        cmd.Parameters.Add(new NpgsqlParameter<string> { TypedValue = history.Node });
        cmd.Parameters.Add(new NpgsqlParameter<int> { TypedValue = Environment.ProcessId });
        cmd.Parameters.Add(new NpgsqlParameter<long> { TypedValue = Mono.Now() });
        await cmd.ExecuteNonQueryAsync(CancellationToken.None);
    }

    /// <summary>Takes the singleton's lock file exclusively (flock), or null if another live child has it.</summary>
    private static FileStream? TryLock(string path)
    {
        try
        {
            return new FileStream(path, FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None);
        }
        catch (IOException)
        {
            return null;
        }
    }

    /// <summary>The data source of a process's children: short timeouts so a cut-off write gives up soon.</summary>
    public static NpgsqlDataSource DataSource(string connectionString, string application) =>
        NpgsqlDataSource.Create(new NpgsqlConnectionStringBuilder(connectionString)
        {
            ApplicationName = application,
            Timeout = 3,
            CommandTimeout = 5,
            MaxPoolSize = 20,
            CancellationTimeout = 500,
        }.ConnectionString);
}
