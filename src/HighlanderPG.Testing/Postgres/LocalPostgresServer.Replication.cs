using System.Globalization;
using System.Text;

namespace HighlanderPG.Testing;

public sealed partial class LocalPostgresServer
{
    /// <summary>
    /// Creates and starts a physical streaming standby of this (running) server, as a throwaway server of its own: a copy
    /// taken with <c>pg_basebackup -R -X stream</c> (as the <c>postgres</c> user when running as root), on a free port,
    /// with <c>cluster_name</c> set to <paramref name="name"/>, which is the name the primary's
    /// <c>synchronous_standby_names</c> and <c>pg_stat_replication.application_name</c> know it by. Dispose it like any
    /// other server.
    /// </summary>
    /// <remarks>
    /// This server's defaults suit replication (PostgreSQL's <c>wal_level = replica</c> and <c>max_wal_senders</c>, and a
    /// <c>pg_hba.conf</c> that admits replication connections); its <c>synchronous_commit = off</c> makes commits wait
    /// for no standby, so for synchronous replication set <c>synchronous_commit</c> (e.g. <c>on</c>) and
    /// <c>synchronous_standby_names</c> on this server, through <see cref="LocalPostgresOptions.ExtraSettings"/> or
    /// <c>ALTER SYSTEM</c> once the standby runs (before, every commit would wait for it).
    /// </remarks>
    /// <param name="name">The standby's <c>cluster_name</c>: 1 to 63 ASCII letters, digits or underscores, not starting with a digit.</param>
    /// <param name="cancellationToken">Cancels the creation; the partly created standby is then removed.</param>
    /// <returns>The running standby (<c>pg_is_in_recovery()</c> is true), streaming from this server.</returns>
    /// <exception cref="ArgumentException"><paramref name="name"/> is not a valid name.</exception>
    /// <exception cref="InvalidOperationException">This server is not running, or a PostgreSQL program failed.</exception>
    public async Task<LocalPostgresServer> CreateStandbyAsync(string name = "standby", CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(name);
        if (!DatabaseNameRegex().IsMatch(name))
        {
            throw new ArgumentException(
                $"'{name}' is not a valid standby name: use 1 to 63 ASCII letters, digits or underscores, not starting with a digit.",
                nameof(name));
        }

        ObjectDisposedException.ThrowIf(Volatile.Read(ref _disposed) != 0, this);
        if (!_running || _networkNamespace is not null)
        {
            throw new InvalidOperationException(_running
                ? "A standby can only be created of a server in the current network namespace."
                : "Start the server before creating a standby of it.");
        }

        var standby = new LocalPostgresServer(
            BinDirectory,
            CreateBaseDirectory(_runUser is not null),
            FindFreeTcpPort(),
            _runUser,
            Host,
            networkNamespace: null,
            _serverEnvironment);
        AppDomain.CurrentDomain.ProcessExit += standby._processExitHandler;
        AppDomain.CurrentDomain.UnhandledException += standby._unhandledExceptionHandler;
        try
        {
            var (program, arguments) = standby.Tool(
                "pg_basebackup",
                "-h", Host,
                "-p", Port.ToString(CultureInfo.InvariantCulture),
                "-U", SuperUser,
                "-D", standby.DataDirectory,
                "-R",
                "-X", "stream",
                "-c", "fast",
                "--no-sync");
            await standby.RunCheckedAsync(program, arguments, cancellationToken).ConfigureAwait(false);

            // The copy has this server's postgresql.conf: its own port and socket directory come after (the last one wins).
            var settings = new StringBuilder()
                .Append("\n# Added by HighlanderPG.Testing: a standby of the server on port ")
                .Append(Port.ToString(CultureInfo.InvariantCulture)).Append(".\n")
                .Append(CultureInfo.InvariantCulture, $"port = {standby.Port}\n")
                .Append(CultureInfo.InvariantCulture, $"unix_socket_directories = '{standby.SocketDirectory.Replace("'", "''", StringComparison.Ordinal)}'\n")
                .Append(CultureInfo.InvariantCulture, $"cluster_name = '{name}'\n")
                .Append("hot_standby = on\n");
            await File.AppendAllTextAsync(Path.Combine(standby.DataDirectory, "postgresql.conf"), settings.ToString(), cancellationToken).ConfigureAwait(false);
            await standby.StartCoreAsync(cancellationToken).ConfigureAwait(false);
            return standby;
        }
        catch
        {
            await standby.DisposeAsync().ConfigureAwait(false);
            throw;
        }
    }

    /// <summary>
    /// Promotes this standby to a primary with <c>pg_ctl promote -w</c>: it ends recovery, starts a new timeline and
    /// accepts writes. Its postmaster keeps running (its start time does not change), and it holds no advisory lock.
    /// </summary>
    /// <param name="cancellationToken">Cancels waiting for the promotion.</param>
    /// <returns>A task that completes when the server has left recovery.</returns>
    /// <exception cref="InvalidOperationException">The server is not running, or <c>pg_ctl promote</c> failed (e.g. it is not a standby).</exception>
    public async Task PromoteAsync(CancellationToken cancellationToken = default)
    {
        await _lifecycle.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            ObjectDisposedException.ThrowIf(Volatile.Read(ref _disposed) != 0, this);
            if (!_running)
            {
                throw new InvalidOperationException("Start the server before promoting it.");
            }

            var (program, arguments) = PgCtl("promote", "-w", "-t", "60");
            await RunCheckedAsync(program, arguments, cancellationToken).ConfigureAwait(false);
        }
        finally
        {
            _lifecycle.Release();
        }
    }
}
