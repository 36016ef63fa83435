using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using Npgsql;

namespace HighlanderPG.Tests.Infrastructure;

/// <summary>A throwaway PgBouncer (Debian's package) in front of the test server, in a given pool mode.</summary>
public sealed class PgBouncer : IAsyncDisposable
{
    private readonly Process _process;
    private readonly string _directory;

    private PgBouncer(Process process, string directory, string connectionString)
    {
        _process = process;
        _directory = directory;
        ConnectionString = connectionString;
    }

    public string ConnectionString { get; }

    public static string? Binary => new[] { "/usr/sbin/pgbouncer", "/usr/bin/pgbouncer" }.FirstOrDefault(File.Exists);

    public static async Task<PgBouncer> StartAsync(string serverConnectionString, string poolMode)
    {
        var binary = Binary ?? throw new InvalidOperationException("pgbouncer is not installed (apt-get install -y pgbouncer; .ci/run does it).");
        var server = new NpgsqlConnectionStringBuilder(serverConnectionString);
        var directory = Directory.CreateTempSubdirectory("hl-pgbouncer-").FullName;
        var port = FreePort();
        var user = server.Username ?? "postgres";
        await File.WriteAllTextAsync(Path.Combine(directory, "users.txt"), $"\"{user}\" \"\"\n");
        await File.WriteAllTextAsync(Path.Combine(directory, "pgbouncer.ini"), $"""
            [databases]
            * = host={server.Host} port={server.Port}
            [pgbouncer]
            listen_addr = 127.0.0.1
            listen_port = {port}
            unix_socket_dir =
            auth_type = trust
            auth_file = {directory}/users.txt
            pool_mode = {poolMode}
            default_pool_size = 4
            max_client_conn = 50
            ignore_startup_parameters = extra_float_digits,options
            logfile = {directory}/pgbouncer.log
            pidfile = {directory}/pgbouncer.pid
            """);

        var root = Environment.UserName == "root";
        if (root)
        {
            Process.Start("chown", ["-R", "postgres:", directory])!.WaitForExit();
        }

        var psi = new ProcessStartInfo(root ? "runuser" : binary) { RedirectStandardError = true, RedirectStandardOutput = true };
        foreach (var arg in root ? ["-u", "postgres", "--", binary, Path.Combine(directory, "pgbouncer.ini")] : new[] { Path.Combine(directory, "pgbouncer.ini") })
        {
            psi.ArgumentList.Add(arg);
        }

        var process = Process.Start(psi)!;
        var connectionString = new NpgsqlConnectionStringBuilder(serverConnectionString) { Host = "127.0.0.1", Port = port, Pooling = false }.ConnectionString;
        var bouncer = new PgBouncer(process, directory, connectionString);
        for (var attempt = 0; ; attempt++)
        {
            try
            {
                using var client = new TcpClient();
                await client.ConnectAsync(IPAddress.Loopback, port);
                return bouncer;
            }
            catch (SocketException) when (attempt < 100 && !process.HasExited)
            {
                await Task.Delay(50);
            }
            catch (SocketException ex)
            {
                var log = File.Exists(Path.Combine(directory, "pgbouncer.log")) ? await File.ReadAllTextAsync(Path.Combine(directory, "pgbouncer.log")) : "";
                await bouncer.DisposeAsync();
                throw new InvalidOperationException($"pgbouncer did not start: {ex.Message}\n{log}");
            }
        }
    }

    private static int FreePort()
    {
        var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        var port = ((IPEndPoint)listener.LocalEndpoint).Port;
        listener.Stop();
        return port;
    }

    public async ValueTask DisposeAsync()
    {
        try
        {
            _process.Kill(entireProcessTree: true);
            await _process.WaitForExitAsync();
        }
        catch (InvalidOperationException)
        {
        }

        _process.Dispose();
        try
        {
            Directory.Delete(_directory, recursive: true);
        }
        catch (IOException)
        {
        }
    }
}
