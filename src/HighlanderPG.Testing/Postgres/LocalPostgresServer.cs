using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using System.Text;
using Npgsql;

namespace HighlanderPG.Testing;

/// <summary>
/// A throwaway PostgreSQL server: its own data directory, TCP port and unix socket directory,
/// configured for speed rather than durability (<c>fsync = off</c>), with trust
/// authentication. Dispose it to stop the server and delete its files. <c>highlander demo</c>
/// runs on one, and so can your own tests of a cluster singleton.
/// </summary>
/// <remarks>
/// <para>
/// It needs PostgreSQL's server programs (<c>initdb</c>, <c>pg_ctl</c>, <c>postgres</c>) on this machine; see
/// <see cref="FindBinDirectory"/> for where they are looked for (the <c>HIGHLANDER_PG_BINDIR</c> environment
/// variable first).
/// </para>
/// <para>
/// Running as root (as on many CI machines and containers): <c>initdb</c> refuses to run as root, so the
/// server's directories are given to the <c>postgres</c> user (created by Debian's <c>postgresql</c>
/// package) and every PostgreSQL program is run through <c>runuser -u postgres --</c>. Nothing else is done
/// as root, and the process needs no root otherwise.
/// </para>
/// <para>
/// Trust authentication is admitted from any address (<c>pg_hba.conf</c>), but the server listens only on
/// <see cref="LocalPostgresOptions.ListenAddresses"/> (<c>127.0.0.1</c> by default). Never list an address
/// that other machines can reach: anyone reaching the port is the superuser. Only use it for throwaway
/// servers on test and demo machines.
/// </para>
/// <para>
/// A server that is never disposed is still stopped and deleted, best effort, when the
/// process exits normally or through an unhandled exception (not when it is killed).
/// </para>
/// </remarks>
public sealed partial class LocalPostgresServer : IAsyncDisposable
{
    /// <summary>The environment variable naming the PostgreSQL binary directory.</summary>
    public const string BinDirectoryEnvironmentVariable = "HIGHLANDER_PG_BINDIR";

    private const string SuperUser = "postgres";
    private const string ServiceUser = "postgres";
    private const int LogTailLines = 40;
    private static readonly TimeSpan CommandTimeout = TimeSpan.FromSeconds(120);
    private static readonly TimeSpan ReadyTimeout = TimeSpan.FromSeconds(30);
    private static readonly TimeSpan CleanupTimeout = TimeSpan.FromSeconds(30);

    private readonly SemaphoreSlim _lifecycle = new(1, 1);
    private readonly string _baseDirectory;
    private readonly string? _runUser;
    private readonly string? _networkNamespace;
    private readonly KeyValuePair<string, string>[] _serverEnvironment;
    private readonly EventHandler _processExitHandler;
    private readonly UnhandledExceptionEventHandler _unhandledExceptionHandler;
    private volatile bool _running;
    private int _disposed;

    private LocalPostgresServer(
        string binDirectory,
        string baseDirectory,
        int port,
        string? runUser,
        string host,
        string? networkNamespace,
        KeyValuePair<string, string>[] serverEnvironment)
    {
        BinDirectory = binDirectory;
        Host = host;
        _networkNamespace = networkNamespace;
        _serverEnvironment = serverEnvironment;
        _baseDirectory = baseDirectory;
        DataDirectory = Path.Combine(baseDirectory, "data");
        SocketDirectory = Path.Combine(baseDirectory, "socket");
        LogFile = Path.Combine(baseDirectory, "postgres.log");
        Port = port;
        _runUser = runUser;
        ConnectionString = new NpgsqlConnectionStringBuilder
        {
            Host = Host,
            Port = port,
            Username = SuperUser,
            Database = "postgres",
        }.ConnectionString;
        _processExitHandler = (_, _) => CleanUpAtProcessExit();
        _unhandledExceptionHandler = (_, e) =>
        {
            // ProcessExit is not raised when an unhandled exception ends the process.
            if (e.IsTerminating)
            {
                CleanUpAtProcessExit();
            }
        };
    }

    /// <summary>
    /// A connection string for the <c>postgres</c> database as the <c>postgres</c> superuser,
    /// over TCP to <see cref="Host"/>:<see cref="Port"/>. Pooling is left at Npgsql's default.
    /// </summary>
    public string ConnectionString { get; }

    /// <summary>
    /// The address clients connect to: <c>127.0.0.1</c> (the test kit's network lab can start a server that
    /// clients reach at another address).
    /// </summary>
    public string Host { get; }

    /// <summary>
    /// The network namespace the server runs in, or <see langword="null"/> for the creator's (only the
    /// test kit's network lab sets one).
    /// </summary>
    internal string? NetworkNamespace => _networkNamespace;

    /// <summary>The server's TCP port; it stays the same across restarts.</summary>
    public int Port { get; }

    /// <summary>The server's data directory (deleted on dispose).</summary>
    public string DataDirectory { get; }

    /// <summary>The directory holding the server's unix socket (deleted on dispose).</summary>
    public string SocketDirectory { get; }

    /// <summary>The server's log file (written by <c>pg_ctl -l</c>; deleted on dispose).</summary>
    public string LogFile { get; }

    /// <summary>The directory of the <c>initdb</c>, <c>pg_ctl</c> and <c>postgres</c> programs used.</summary>
    public string BinDirectory { get; }

    /// <summary>The server's version, as reported by <c>SHOW server_version</c>.</summary>
    public string ServerVersion { get; private set; } = string.Empty;

    /// <summary>Whether the server was started and not stopped since, as far as this object knows.</summary>
    public bool IsRunning => _running;

    /// <summary>
    /// Creates, configures and starts a new throwaway server.
    /// </summary>
    /// <param name="options">The options, or <see langword="null"/> for the defaults.</param>
    /// <param name="cancellationToken">Cancels the start; the partly created server is then removed.</param>
    /// <returns>The running server.</returns>
    /// <exception cref="InvalidOperationException">
    /// PostgreSQL is not installed, the <c>postgres</c> user is missing while running as root,
    /// or a PostgreSQL program failed (the message has the command, its output and the server log).
    /// </exception>
    public static async Task<LocalPostgresServer> StartAsync(LocalPostgresOptions? options = null, CancellationToken cancellationToken = default)
    {
        options ??= new LocalPostgresOptions();
        options.Validate();

        var binDirectory = ResolveBinDirectory(options.BinDirectory);
        var runUser = IsRoot() ? ServiceUser : null;
        if (options.NetworkNamespace is not null && runUser is null)
        {
            throw new InvalidOperationException(
                $"{nameof(LocalPostgresOptions)}.{nameof(LocalPostgresOptions.NetworkNamespace)} is '{options.NetworkNamespace}': " +
                "starting a server in a network namespace (`ip netns exec`) needs root.");
        }

        if (runUser is not null)
        {
            await EnsureUserExistsAsync(runUser, cancellationToken).ConfigureAwait(false);
        }

        var baseDirectory = CreateBaseDirectory(runUser is not null);
        var server = new LocalPostgresServer(
            binDirectory,
            baseDirectory,
            FindFreeTcpPort(),
            runUser,
            options.EffectiveConnectHost(),
            options.NetworkNamespace,
            [.. options.ServerEnvironment.OrderBy(v => v.Key, StringComparer.Ordinal)]);
        AppDomain.CurrentDomain.ProcessExit += server._processExitHandler;
        AppDomain.CurrentDomain.UnhandledException += server._unhandledExceptionHandler;
        try
        {
            await server.InitializeAsync(options, cancellationToken).ConfigureAwait(false);
            await server.StartCoreAsync(cancellationToken).ConfigureAwait(false);
            return server;
        }
        catch
        {
            await server.DisposeAsync().ConfigureAwait(false);
            throw;
        }
    }

    /// <summary>
    /// Finds the PostgreSQL binary directory: the <c>HIGHLANDER_PG_BINDIR</c> environment
    /// variable; else <c>pg_config --bindir</c> if that directory has <c>initdb</c>; else the
    /// highest version under <c>/usr/lib/postgresql/*/bin</c>; else the directory of
    /// <c>initdb</c> on <c>PATH</c> (following symbolic links).
    /// </summary>
    /// <returns>The directory, or <see langword="null"/> if PostgreSQL was not found.</returns>
    public static string? FindBinDirectory()
    {
        var fromEnvironment = Environment.GetEnvironmentVariable(BinDirectoryEnvironmentVariable);
        if (!string.IsNullOrWhiteSpace(fromEnvironment))
        {
            return fromEnvironment;
        }

        var pgConfig = FindOnPath("pg_config");
        if (pgConfig is not null)
        {
            var result = ChildProcess.RunBlocking(pgConfig, ["--bindir"], workingDirectory: null, TimeSpan.FromSeconds(10));
            var directory = result is { ExitCode: 0 } ? result.Output.Trim() : null;
            if (!string.IsNullOrEmpty(directory) && HasServerPrograms(directory))
            {
                return directory;
            }
        }

        const string debianRoot = "/usr/lib/postgresql";
        if (Directory.Exists(debianRoot))
        {
            var best = Directory.EnumerateDirectories(debianRoot)
                .Select(d => (Path: Path.Combine(d, "bin"), Version: ParseVersion(Path.GetFileName(d))))
                .Where(d => d.Version is not null && HasServerPrograms(d.Path))
                .OrderByDescending(d => d.Version)
                .FirstOrDefault();
            if (best.Path is not null)
            {
                return best.Path;
            }
        }

        var initdb = FindOnPath("initdb");
        if (initdb is not null && FindOnPath("pg_ctl") is not null)
        {
            // Prefer the real directory: postgres must sit next to initdb.
            var target = File.ResolveLinkTarget(initdb, returnFinalTarget: true)?.FullName;
            var targetDirectory = target is null ? null : Path.GetDirectoryName(target);
            return targetDirectory is not null && HasServerPrograms(targetDirectory)
                ? targetDirectory
                : Path.GetDirectoryName(initdb);
        }

        return null;
    }

    /// <summary>
    /// Creates a new, empty database (from <c>template0</c>, so concurrent creations don't
    /// conflict) and returns a connection string for it; used to isolate tests from each other.
    /// </summary>
    /// <param name="name">
    /// The database name: 1 to 63 ASCII letters, digits or underscores, not starting with a digit.
    /// </param>
    /// <param name="cancellationToken">Cancels the command.</param>
    /// <returns><see cref="ConnectionString"/> with its database replaced by <paramref name="name"/>.</returns>
    /// <exception cref="ArgumentException"><paramref name="name"/> is not a valid name.</exception>
    public async Task<string> CreateDatabaseAsync(string name, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(name);
        if (!DatabaseNameRegex().IsMatch(name))
        {
            throw new ArgumentException(
                $"'{name}' is not a valid database name: use 1 to 63 ASCII letters, digits or underscores, not starting with a digit.",
                nameof(name));
        }

        ObjectDisposedException.ThrowIf(Volatile.Read(ref _disposed) != 0, this);
        var connection = new NpgsqlConnection(AdminConnectionString());
        await using (connection.ConfigureAwait(false))
        {
            await connection.OpenAsync(cancellationToken).ConfigureAwait(false);
            var command = new NpgsqlCommand($"CREATE DATABASE \"{name}\" TEMPLATE template0", connection);
            await using (command.ConfigureAwait(false))
            {
                await command.ExecuteNonQueryAsync(cancellationToken).ConfigureAwait(false);
            }
        }

        return new NpgsqlConnectionStringBuilder(ConnectionString) { Database = name }.ConnectionString;
    }

    /// <summary>
    /// Stops the server with <c>pg_ctl stop -m smart|fast|immediate -w</c>. Does nothing if it is
    /// already stopped.
    /// </summary>
    /// <param name="mode">How to shut down; <see cref="ShutdownMode.Immediate"/> simulates a crash.</param>
    /// <param name="cancellationToken">Cancels waiting for the stop.</param>
    /// <returns>A task that completes when the server has stopped.</returns>
    /// <exception cref="InvalidOperationException"><c>pg_ctl</c> failed.</exception>
    public async Task StopAsync(ShutdownMode mode = ShutdownMode.Fast, CancellationToken cancellationToken = default)
    {
        await _lifecycle.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            ObjectDisposedException.ThrowIf(Volatile.Read(ref _disposed) != 0, this);
            await StopCoreAsync(mode, cancellationToken).ConfigureAwait(false);
        }
        finally
        {
            _lifecycle.Release();
        }
    }

    /// <summary>
    /// Starts the server again after <see cref="StopAsync"/>, on the same port and data
    /// directory, and waits until it accepts connections. Does nothing if it is running.
    /// </summary>
    /// <param name="cancellationToken">Cancels waiting for the start.</param>
    /// <returns>A task that completes when the server accepts connections.</returns>
    /// <exception cref="InvalidOperationException"><c>pg_ctl</c> failed or the server did not become ready.</exception>
    public async Task StartAsync(CancellationToken cancellationToken = default)
    {
        await _lifecycle.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            ObjectDisposedException.ThrowIf(Volatile.Read(ref _disposed) != 0, this);
            if (!_running)
            {
                await StartCoreAsync(cancellationToken).ConfigureAwait(false);
            }
        }
        finally
        {
            _lifecycle.Release();
        }
    }

    /// <summary>
    /// Makes the (stopped) server start as a standby the next time: it writes <c>standby.signal</c> into the data
    /// directory, so the server runs in recovery (<c>pg_is_in_recovery()</c> is true) and accepts read-only sessions.
    /// </summary>
    /// <param name="cancellationToken">Cancels the change.</param>
    /// <returns>A task that completes when the signal file is in place.</returns>
    /// <exception cref="InvalidOperationException">The server is running.</exception>
    public async Task MarkAsStandbyAsync(CancellationToken cancellationToken = default)
    {
        await _lifecycle.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            ObjectDisposedException.ThrowIf(Volatile.Read(ref _disposed) != 0, this);
            if (_running)
            {
                throw new InvalidOperationException("Stop the server before marking it as a standby.");
            }

            var signal = Path.Combine(DataDirectory, "standby.signal");
            await File.WriteAllTextAsync(signal, "", cancellationToken).ConfigureAwait(false);
            if (IsRoot())
            {
                var result = ChildProcess.RunBlocking("chown", [ServiceUser + ":", signal], null, TimeSpan.FromSeconds(30));
                if (result is not { ExitCode: 0 })
                {
                    throw new InvalidOperationException($"Could not give {signal} to the {ServiceUser} user.");
                }
            }
        }
        finally
        {
            _lifecycle.Release();
        }
    }

    /// <summary>
    /// Stops the server and starts it again on the same port. Every session is ended, so every
    /// advisory lock is released. With <see cref="ShutdownMode.Immediate"/> the start runs
    /// crash recovery.
    /// </summary>
    /// <param name="mode">How to shut down.</param>
    /// <param name="cancellationToken">Cancels the restart.</param>
    /// <returns>A task that completes when the server accepts connections again.</returns>
    /// <exception cref="InvalidOperationException"><c>pg_ctl</c> failed or the server did not become ready.</exception>
    public async Task RestartAsync(ShutdownMode mode = ShutdownMode.Fast, CancellationToken cancellationToken = default)
    {
        await _lifecycle.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            ObjectDisposedException.ThrowIf(Volatile.Read(ref _disposed) != 0, this);
            await StopCoreAsync(mode, cancellationToken).ConfigureAwait(false);
            await StartCoreAsync(cancellationToken).ConfigureAwait(false);
        }
        finally
        {
            _lifecycle.Release();
        }
    }

    /// <summary>
    /// Stops the server with <c>pg_ctl stop -m immediate</c> and deletes its directories.
    /// Best effort: never throws.
    /// </summary>
    /// <returns>A task that completes when the server is stopped and its files are gone.</returns>
    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }

        AppDomain.CurrentDomain.ProcessExit -= _processExitHandler;
        AppDomain.CurrentDomain.UnhandledException -= _unhandledExceptionHandler;

        // Wait for a lifecycle operation in flight, but never forever: each has its own timeout.
        var locked = await _lifecycle.WaitAsync(CommandTimeout + CommandTimeout).ConfigureAwait(false);
        try
        {
            if (Directory.Exists(DataDirectory))
            {
                // Cleanup runs with CancellationToken.None so that nothing can skip it.
                var (program, arguments) = PgCtl("stop", "-m", "immediate", "-w", "-t", "60");
                try
                {
                    await ChildProcess.RunAsync(program, arguments, _baseDirectory, CleanupTimeout, CancellationToken.None).ConfigureAwait(false);
                }
                catch (InvalidOperationException)
                {
                    // Best effort.
                }
            }

            _running = false;
            await DeleteDirectoryAsync(_baseDirectory).ConfigureAwait(false);
        }
        finally
        {
            if (locked)
            {
                _lifecycle.Release();
            }
        }
    }

    private async Task InitializeAsync(LocalPostgresOptions options, CancellationToken cancellationToken)
    {
        var (program, arguments) = Tool(
            "initdb",
            "-D", DataDirectory,
            "-A", "trust",
            "-U", SuperUser,
            "--no-sync",
            "-E", "UTF8",
            // C locale: works whatever locales the machine has generated.
            "--locale=C");
        await RunCheckedAsync(program, arguments, cancellationToken).ConfigureAwait(false);

        var settings = new StringBuilder()
            .Append("\n# Added by HighlanderPG.Testing (throwaway test server: speed over durability).\n")
            .Append(CultureInfo.InvariantCulture, $"port = {Port}\n")
            .Append(CultureInfo.InvariantCulture, $"listen_addresses = '{options.EffectiveListenAddresses()}'\n")
            .Append(CultureInfo.InvariantCulture, $"unix_socket_directories = '{Quote(SocketDirectory)}'\n")
            .Append("fsync = off\n")
            .Append("synchronous_commit = off\n")
            .Append("full_page_writes = off\n")
            // The test suite runs 200+ concurrent sessions.
            .Append("max_connections = 500\n")
            .Append("shared_buffers = '32MB'\n")
            .Append("log_min_messages = warning\n")
            .Append("logging_collector = off\n");
        foreach (var (name, value) in options.ExtraSettings)
        {
            settings.Append(CultureInfo.InvariantCulture, $"{name} = '{Quote(value)}'\n");
        }

        // Runs as root or as the owner: either way the files stay the postgres user's (appending
        // doesn't change ownership).
        await File.AppendAllTextAsync(Path.Combine(DataDirectory, "postgresql.conf"), settings.ToString(), cancellationToken).ConfigureAwait(false);

        // Clients in network namespaces (the test kit's partitions) connect from addresses other than loopback;
        // listen_addresses is what keeps others out.
        const string hba =
            "\n# Added by HighlanderPG.Testing: throwaway server, trust from any address it listens on.\n" +
            "host all all 0.0.0.0/0 trust\n" +
            "host all all ::/0 trust\n" +
            "host replication all 0.0.0.0/0 trust\n" +
            "host replication all ::/0 trust\n";
        await File.AppendAllTextAsync(Path.Combine(DataDirectory, "pg_hba.conf"), hba, cancellationToken).ConfigureAwait(false);

        static string Quote(string value) => value.Replace("'", "''", StringComparison.Ordinal);
    }

    private async Task StartCoreAsync(CancellationToken cancellationToken)
    {
        // Only the start needs the namespace: the server inherits it from pg_ctl. pg_ctl's -w watches the
        // postmaster.pid file, not a connection, so it works from inside the namespace as well.
        var (program, arguments) = InNetworkNamespace(PgCtlStart());
        await RunCheckedAsync(program, arguments, cancellationToken).ConfigureAwait(false);
        _running = true;
        ServerVersion = await WaitUntilReadyAsync(cancellationToken).ConfigureAwait(false);
    }

    private async Task StopCoreAsync(ShutdownMode mode, CancellationToken cancellationToken)
    {
        if (!_running)
        {
            return;
        }

        var modeName = mode switch
        {
            ShutdownMode.Smart => "smart",
            ShutdownMode.Fast => "fast",
            ShutdownMode.Immediate => "immediate",
            _ => throw new ArgumentOutOfRangeException(nameof(mode), mode, "Unknown shutdown mode."),
        };
        var (program, arguments) = PgCtl("stop", "-m", modeName, "-w", "-t", "60");
        var result = await ChildProcess.RunAsync(program, arguments, _baseDirectory, CommandTimeout, cancellationToken).ConfigureAwait(false);
        if (result.ExitCode != 0)
        {
            // The server may have died on its own; `pg_ctl status` exits with 3 when none runs.
            var (statusProgram, statusArguments) = PgCtl("status");
            var status = await ChildProcess.RunAsync(statusProgram, statusArguments, _baseDirectory, CommandTimeout, cancellationToken).ConfigureAwait(false);
            if (status.ExitCode != 3)
            {
                throw Failure(result);
            }
        }

        _running = false;
    }

    private async Task<string> WaitUntilReadyAsync(CancellationToken cancellationToken)
    {
        var connectionString = new NpgsqlConnectionStringBuilder(AdminConnectionString()) { Timeout = 5 }.ConnectionString;
        var deadline = DateTime.UtcNow + ReadyTimeout;
        while (true)
        {
            try
            {
                var connection = new NpgsqlConnection(connectionString);
                await using (connection.ConfigureAwait(false))
                {
                    await connection.OpenAsync(cancellationToken).ConfigureAwait(false);
                    var command = new NpgsqlCommand("SHOW server_version", connection);
                    await using (command.ConfigureAwait(false))
                    {
                        return (string)(await command.ExecuteScalarAsync(cancellationToken).ConfigureAwait(false))!;
                    }
                }
            }
            catch (Exception ex) when (ex is NpgsqlException or SocketException or TimeoutException && !cancellationToken.IsCancellationRequested)
            {
                if (DateTime.UtcNow >= deadline)
                {
                    throw new InvalidOperationException(
                        $"PostgreSQL at {Host}:{Port} did not accept connections within {ReadyTimeout.TotalSeconds:0} s: {ex.Message}{LogTail()}",
                        ex);
                }

                await Task.Delay(100, cancellationToken).ConfigureAwait(false);
            }
        }
    }

    /// <summary>The admin connection string without pooling: probes must not leave idle sessions behind.</summary>
    private string AdminConnectionString() =>
        new NpgsqlConnectionStringBuilder(ConnectionString) { Pooling = false }.ConnectionString;

    private async Task RunCheckedAsync(string program, IReadOnlyList<string> arguments, CancellationToken cancellationToken)
    {
        var result = await ChildProcess.RunAsync(program, arguments, _baseDirectory, CommandTimeout, cancellationToken).ConfigureAwait(false);
        if (result.ExitCode != 0)
        {
            throw Failure(result);
        }
    }

    private InvalidOperationException Failure(ChildProcessResult result) =>
        new($"Command failed with exit code {result.ExitCode}: {result.CommandLine}" +
            $"{Environment.NewLine}--- output (last {LogTailLines} lines) ---{Environment.NewLine}{ChildProcess.Tail(result.Output, LogTailLines)}" +
            LogTail());

    private string LogTail()
    {
        try
        {
            if (!File.Exists(LogFile))
            {
                return string.Empty;
            }

            using var stream = new FileStream(LogFile, FileMode.Open, FileAccess.Read, FileShare.ReadWrite | FileShare.Delete);
            using var reader = new StreamReader(stream);
            return $"{Environment.NewLine}--- server log {LogFile} (last {LogTailLines} lines) ---{Environment.NewLine}{ChildProcess.Tail(reader.ReadToEnd(), LogTailLines)}";
        }
        catch (IOException)
        {
            return string.Empty;
        }
        catch (UnauthorizedAccessException)
        {
            return string.Empty;
        }
    }

    private (string Program, IReadOnlyList<string> Arguments) PgCtl(string action, params string[] options) =>
        Tool("pg_ctl", ["-D", DataDirectory, .. options, action]);

    /// <summary>
    /// The command run through <c>ip netns exec {namespace}</c> when the server has a network namespace
    /// (as root; <c>runuser</c>, if any, comes after it, so only the program itself runs as the service user).
    /// </summary>
    private (string Program, IReadOnlyList<string> Arguments) InNetworkNamespace((string Program, IReadOnlyList<string> Arguments) command) =>
        _networkNamespace is null
            ? command
            : (SystemPrograms.Ip(), ["netns", "exec", _networkNamespace, command.Program, .. command.Arguments]);

    /// <summary>A PostgreSQL program invocation, through <c>runuser</c> when running as root.</summary>
    private (string Program, IReadOnlyList<string> Arguments) Tool(string name, params string[] arguments) =>
        AsServiceUser(Path.Combine(BinDirectory, ExecutableName(name)), arguments);

    /// <summary>
    /// <c>pg_ctl start</c> with <see cref="LocalPostgresOptions.ServerEnvironment"/> set through <c>env</c>, which
    /// runs after <c>runuser</c> (if any): neither <c>runuser</c> nor PAM can drop a variable, and only
    /// <c>pg_ctl</c> and the server it starts get them.
    /// </summary>
    private (string Program, IReadOnlyList<string> Arguments) PgCtlStart()
    {
        string[] arguments = ["-D", DataDirectory, "-l", LogFile, "-w", "-t", "60", "start"];
        var pgCtl = Path.Combine(BinDirectory, ExecutableName("pg_ctl"));
        if (_serverEnvironment.Length == 0)
        {
            return AsServiceUser(pgCtl, arguments);
        }

        var env = SystemPrograms.Find("env")
            ?? throw new InvalidOperationException("The `env` program (coreutils) was not found; it sets the server's environment variables.");
        return AsServiceUser(env, [.. _serverEnvironment.Select(v => v.Key + "=" + v.Value), pgCtl, .. arguments]);
    }

    private (string Program, IReadOnlyList<string> Arguments) AsServiceUser(string program, IReadOnlyList<string> arguments) =>
        _runUser is null
            ? (program, arguments)
            : (FindRunUser(), ["-u", _runUser, "--", program, .. arguments]);

    private void CleanUpAtProcessExit()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }

        if (Directory.Exists(DataDirectory))
        {
            var (program, arguments) = PgCtl("stop", "-m", "immediate", "-w", "-t", "20");
            ChildProcess.RunBlocking(program, arguments, _baseDirectory, TimeSpan.FromSeconds(25));
        }

        try
        {
            Directory.Delete(_baseDirectory, recursive: true);
        }
        catch (IOException)
        {
        }
        catch (UnauthorizedAccessException)
        {
        }
    }

    private static async Task DeleteDirectoryAsync(string path)
    {
        // The postmaster may still be closing files for a moment after pg_ctl returns.
        for (var attempt = 0; attempt < 5 && Directory.Exists(path); attempt++)
        {
            try
            {
                Directory.Delete(path, recursive: true);
                return;
            }
            catch (IOException)
            {
            }
            catch (UnauthorizedAccessException)
            {
            }

            await Task.Delay(200 * (attempt + 1), CancellationToken.None).ConfigureAwait(false);
        }
    }

    private static string ResolveBinDirectory(string? explicitDirectory)
    {
        var directory = explicitDirectory ?? FindBinDirectory();
        if (directory is null)
        {
            throw new InvalidOperationException(
                "PostgreSQL server programs (initdb, pg_ctl) were not found. Install PostgreSQL " +
                "(on Debian or Ubuntu: `apt-get install -y postgresql`) or set the " +
                $"{BinDirectoryEnvironmentVariable} environment variable to the directory that holds initdb and pg_ctl.");
        }

        if (!HasServerPrograms(directory))
        {
            var source = explicitDirectory is not null
                ? $"{nameof(LocalPostgresOptions)}.{nameof(LocalPostgresOptions.BinDirectory)}"
                : BinDirectoryEnvironmentVariable;
            throw new InvalidOperationException(
                $"{source} is '{directory}', but that directory has no initdb and pg_ctl. Point it at PostgreSQL's bin " +
                "directory (e.g. /usr/lib/postgresql/15/bin) or install PostgreSQL (`apt-get install -y postgresql`).");
        }

        return Path.GetFullPath(directory);
    }

    private static bool HasServerPrograms(string directory) =>
        File.Exists(Path.Combine(directory, ExecutableName("initdb")))
        && File.Exists(Path.Combine(directory, ExecutableName("pg_ctl")));

    private static string ExecutableName(string name) => OperatingSystem.IsWindows() ? name + ".exe" : name;

    private static Version? ParseVersion(string text) =>
        Version.TryParse(text.Contains('.', StringComparison.Ordinal) ? text : text + ".0", out var version) ? version : null;

    private static string? FindOnPath(string name)
    {
        var path = Environment.GetEnvironmentVariable("PATH");
        if (string.IsNullOrEmpty(path))
        {
            return null;
        }

        return path.Split(Path.PathSeparator, StringSplitOptions.RemoveEmptyEntries)
            .Select(directory => Path.Combine(directory, ExecutableName(name)))
            .FirstOrDefault(File.Exists);
    }

    private static string FindRunUser() =>
        new[] { "/usr/sbin/runuser", "/sbin/runuser", "/usr/bin/runuser", "/bin/runuser" }.FirstOrDefault(File.Exists)
        ?? FindOnPath("runuser")
        ?? throw new InvalidOperationException(
            "Running as root, so PostgreSQL must run as the postgres user through `runuser`, which was not found (it is part of util-linux).");

    private static async Task EnsureUserExistsAsync(string user, CancellationToken cancellationToken)
    {
        var result = await ChildProcess.RunAsync("id", ["-u", user], null, TimeSpan.FromSeconds(10), cancellationToken).ConfigureAwait(false);
        if (result.ExitCode != 0)
        {
            throw new InvalidOperationException(
                $"Running as root: initdb refuses to run as root, so the server runs as the '{user}' user, which does not exist. " +
                $"Install PostgreSQL (`apt-get install -y postgresql` creates it), or create it (`useradd --system {user}`), or run the tests as a non-root user.");
        }
    }

    /// <summary>
    /// Creates a fresh, private directory for one server: <c>data/</c>, <c>socket/</c> and the log.
    /// </summary>
    private static string CreateBaseDirectory(bool forServiceUser)
    {
        var parent = Path.GetTempPath();
        if (forServiceUser && !IsTraversableByOthers(parent))
        {
            // The postgres user must be able to reach the data directory.
            parent = "/tmp";
        }

        // A unix socket path is limited to about 107 bytes.
        if (Path.Combine(parent, "highlanderpg-0123456789ab", "socket", ".s.PGSQL.65535").Length > 100)
        {
            parent = "/tmp";
        }

        var baseDirectory = Path.Combine(parent, "highlanderpg-" + Guid.NewGuid().ToString("N")[..12]);
        var data = Path.Combine(baseDirectory, "data");
        var socket = Path.Combine(baseDirectory, "socket");
        if (OperatingSystem.IsWindows())
        {
            Directory.CreateDirectory(data);
            Directory.CreateDirectory(socket);
            return baseDirectory;
        }

        const UnixFileMode Private = UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute;
        Directory.CreateDirectory(baseDirectory, Private);
        Directory.CreateDirectory(data, Private);
        Directory.CreateDirectory(socket, Private);
        if (forServiceUser)
        {
            var result = ChildProcess.RunBlocking("chown", ["-R", ServiceUser + ":", baseDirectory], null, TimeSpan.FromSeconds(30));
            if (result is not { ExitCode: 0 })
            {
                try
                {
                    Directory.Delete(baseDirectory, recursive: true);
                }
                catch (IOException)
                {
                }

                throw new InvalidOperationException(
                    $"Could not give '{baseDirectory}' to the {ServiceUser} user: {result?.CommandLine} {result?.Output}");
            }
        }

        return baseDirectory;
    }

    private static bool IsTraversableByOthers(string directory)
    {
        if (OperatingSystem.IsWindows())
        {
            return true;
        }

        for (var current = new DirectoryInfo(Path.GetFullPath(directory)); current is not null; current = current.Parent)
        {
            if (!current.Exists || (current.UnixFileMode & UnixFileMode.OtherExecute) == 0)
            {
                return false;
            }
        }

        return true;
    }

    private static int FindFreeTcpPort()
    {
        var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        try
        {
            return ((IPEndPoint)listener.LocalEndpoint).Port;
        }
        finally
        {
            listener.Stop();
        }
    }

    /// <summary>Whether the process runs as root (effective user id 0).</summary>
    internal static bool IsRoot()
    {
        if (OperatingSystem.IsWindows())
        {
            return false;
        }

        try
        {
            return NativeMethods.geteuid() == 0;
        }
        catch (DllNotFoundException)
        {
            return Environment.UserName == "root";
        }
        catch (EntryPointNotFoundException)
        {
            return Environment.UserName == "root";
        }
    }

    [System.Text.RegularExpressions.GeneratedRegex("^[A-Za-z_][A-Za-z0-9_]{0,62}$", System.Text.RegularExpressions.RegexOptions.CultureInvariant)]
    private static partial System.Text.RegularExpressions.Regex DatabaseNameRegex();

    private static class NativeMethods
    {
        [DllImport("libc", SetLastError = false)]
        [DefaultDllImportSearchPaths(DllImportSearchPath.SafeDirectories)]
#pragma warning disable SYSLIB1054 // LibraryImport would need AllowUnsafeBlocks for no gain here.
        internal static extern uint geteuid();
#pragma warning restore SYSLIB1054
    }
}
