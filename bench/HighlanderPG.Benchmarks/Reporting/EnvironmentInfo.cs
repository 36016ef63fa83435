using System.Diagnostics;
using System.Globalization;
using System.Reflection;
using System.Runtime.InteropServices;
using HighlanderPG.Testing;
using Medallion.Threading.Postgres;
using Npgsql;

namespace HighlanderPG.Benchmarks.Reporting;

/// <summary>What the numbers were measured on.</summary>
internal sealed record EnvironmentInfo(
    string Machine,
    string Runtime,
    string ServerVersion,
    string ServerDescription,
    IReadOnlyList<(string Name, string Value)> ServerSettings,
    string Libraries,
    string? RepositoryRoot)
{
    /// <summary>The machine's 1-minute load average when the cases started.</summary>
    public double? LoadAverageAtStart { get; init; }

    /// <summary>The machine's 1-minute load average when the cases ended.</summary>
    public double? LoadAverageAtEnd { get; init; }

    /// <summary>The commit the library was built from (short hash, marked when src/ had uncommitted changes).</summary>
    public string Commit { get; init; } = "unknown";

    private static readonly string[] SettingNames =
    [
        "idle_session_timeout", "lock_timeout", "statement_timeout", "client_connection_check_interval",
        "tcp_keepalives_idle", "max_connections", "shared_buffers", "fsync", "synchronous_commit",
    ];

    public static async Task<EnvironmentInfo> CollectAsync(string connectionString, LocalPostgresServer? server, CancellationToken cancellationToken)
    {
        var builder = new NpgsqlConnectionStringBuilder(connectionString) { Pooling = false, ApplicationName = "bench-info" };
        await using var connection = new NpgsqlConnection(builder.ConnectionString);
        await connection.OpenAsync(cancellationToken);
        string version;
        await using (var cmd = new NpgsqlCommand("SELECT version()", connection))
        {
            version = (string)(await cmd.ExecuteScalarAsync(cancellationToken))!;
        }

        var settings = new List<(string, string)>();
        await using (var cmd = new NpgsqlCommand("SELECT name, current_setting(name) FROM pg_catalog.pg_settings WHERE name = ANY($1) ORDER BY array_position($1, name)", connection))
        {
            cmd.Parameters.Add(new NpgsqlParameter<string[]> { TypedValue = SettingNames });
            await using var reader = await cmd.ExecuteReaderAsync(cancellationToken);
            while (await reader.ReadAsync(cancellationToken))
            {
                settings.Add((reader.GetString(0), reader.GetString(1)));
            }
        }

        // Never the connection string itself: it may carry a password.
        var where = server is not null
            ? $"throwaway local server (HighlanderPG.Testing.LocalPostgresServer) on {server.Host}:{server.Port}, TCP over loopback, in the same machine as the benchmark"
            : $"existing server {builder.Host}:{builder.Port}/{builder.Database ?? builder.Username} (given with --connection)";

        var cpu = ReadCpuModel();
        var memory = GC.GetGCMemoryInfo().TotalAvailableMemoryBytes / (1024.0 * 1024 * 1024);
        var machine = string.Create(CultureInfo.InvariantCulture,
            $"{RuntimeInformation.OSDescription} ({RuntimeInformation.OSArchitecture}); {Environment.ProcessorCount} logical cores{(cpu is null ? "" : $" ({cpu})")}; {memory:0.#} GiB memory");
        var root = RepositoryRootFinder.Find();
        var git = GitDescription(root);
        var libraries = $"HighlanderPG {InformationalVersion(typeof(HighlanderOptions).Assembly)} ({git}); " +
            $"Npgsql {InformationalVersion(typeof(NpgsqlConnection).Assembly)}; " +
            $"DistributedLock.Postgres {InformationalVersion(typeof(PostgresDistributedLock).Assembly)}";
        return new EnvironmentInfo(machine, RuntimeInformation.FrameworkDescription, version, where, settings, libraries, root)
        {
            Commit = git.StartsWith("commit ", StringComparison.Ordinal) ? git["commit ".Length..] : git,
        };
    }

    private static string? ReadCpuModel()
    {
        try
        {
            return File.ReadLines("/proc/cpuinfo")
                .FirstOrDefault(l => l.StartsWith("model name", StringComparison.Ordinal))?
                .Split(':', 2)[1].Trim();
        }
        catch (IOException)
        {
            return null;
        }
        catch (UnauthorizedAccessException)
        {
            return null;
        }
    }

    private static string InformationalVersion(Assembly assembly)
    {
        var version = assembly.GetCustomAttribute<AssemblyInformationalVersionAttribute>()?.InformationalVersion
            ?? assembly.GetName().Version?.ToString() ?? "?";
        var plus = version.IndexOf('+', StringComparison.Ordinal);
        return plus > 0 ? version[..plus] : version;
    }

    /// <summary>The commit the library was built from, and whether src/ had uncommitted changes; best effort.</summary>
    private static string GitDescription(string? root)
    {
        if (root is null)
        {
            return "commit unknown";
        }

        var commit = Git(root, "rev-parse", "--short", "HEAD")?.Trim();
        if (string.IsNullOrEmpty(commit))
        {
            return "commit unknown";
        }

        var dirty = Git(root, "status", "--porcelain", "--", "src");
        return string.IsNullOrWhiteSpace(dirty) ? $"commit {commit}" : $"commit {commit} with uncommitted changes in src/";
    }

    private static string? Git(string root, params string[] arguments)
    {
        try
        {
            var startInfo = new ProcessStartInfo("git") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false, WorkingDirectory = root };
            foreach (var argument in arguments)
            {
                startInfo.ArgumentList.Add(argument);
            }

            using var process = Process.Start(startInfo);
            if (process is null)
            {
                return null;
            }

            var output = process.StandardOutput.ReadToEnd();
            return process.WaitForExit(10_000) && process.ExitCode == 0 ? output : null;
        }
        catch (System.ComponentModel.Win32Exception)
        {
            return null;
        }
    }
}

/// <summary>Finds the repository root (the directory holding HighlanderPG.slnx).</summary>
internal static class RepositoryRootFinder
{
    public static string? Find()
    {
        foreach (var start in new[] { Environment.CurrentDirectory, AppContext.BaseDirectory })
        {
            for (var directory = new DirectoryInfo(start); directory is not null; directory = directory.Parent)
            {
                if (File.Exists(Path.Combine(directory.FullName, "HighlanderPG.slnx")))
                {
                    return directory.FullName;
                }
            }
        }

        return null;
    }
}
