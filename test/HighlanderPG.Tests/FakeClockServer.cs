using System.Globalization;
using HighlanderPG.Testing;

namespace HighlanderPG.Tests;

/// <summary>
/// A throwaway PostgreSQL server with a wall clock of its own: libfaketime is preloaded into it (and only into it) and
/// reads its offset from a file on every clock reading, so <see cref="StepForward"/> steps the server's wall clock
/// at once, in open sessions too, while the machine's clock (and every other test) is left alone. The server's
/// monotonic clock is not faked.
/// </summary>
/// <remarks>
/// Needs libfaketime (Debian package <c>libfaketime</c>; scripts/test.sh installs it). Without it the test fails and says so: a
/// test of a clock step that skips silently proves nothing.
/// </remarks>
public sealed class FakeClockServer : IAsyncDisposable
{
    /// <summary>Where Debian's <c>libfaketime</c> package puts the library (<c>/usr/lib/&lt;multiarch&gt;/faketime/</c>), or the amd64 path when absent.</summary>
    public static readonly string Library = FindLibrary();

    private static string FindLibrary()
    {
        const string Amd64 = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";
        if (File.Exists(Amd64) || !Directory.Exists("/usr/lib"))
        {
            return Amd64;
        }

        return Directory.EnumerateDirectories("/usr/lib")
            .Select(d => Path.Combine(d, "faketime", "libfaketime.so.1"))
            .FirstOrDefault(File.Exists) ?? Amd64;
    }

    private readonly string _directory;
    private readonly string _file;
    private TimeSpan _offset;

    private FakeClockServer(string directory, string file, LocalPostgresServer server)
    {
        _directory = directory;
        _file = file;
        Server = server;
    }

    public LocalPostgresServer Server { get; }

    public string ConnectionString => Server.ConnectionString;

    public static async Task<FakeClockServer> StartAsync()
    {
        if (!OperatingSystem.IsLinux())
        {
            throw new PlatformNotSupportedException("The server clock step tests preload libfaketime into PostgreSQL: Linux only.");
        }

        if (!File.Exists(Library))
        {
            Assert.Fail(
                $"libfaketime is missing ({Library}): the server clock step tests need it. Install the Debian package " +
                "`libfaketime` (apt-get install -y libfaketime; scripts/test.sh installs it).");
        }

        // In /tmp, readable by all: as root the server runs as the postgres user, which must read the file.
        var directory = Path.Combine("/tmp", "highlander-clock-" + Guid.NewGuid().ToString("N")[..12]);
        Directory.CreateDirectory(
            directory,
            UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute |
            UnixFileMode.GroupRead | UnixFileMode.GroupExecute | UnixFileMode.OtherRead | UnixFileMode.OtherExecute);
        var file = Path.Combine(directory, "offset");
        try
        {
            WriteOffset(directory, file, TimeSpan.Zero);
            var server = await LocalPostgresServer.StartAsync(new LocalPostgresOptions
            {
                ServerEnvironment =
                {
                    ["LD_PRELOAD"] = Library,
                    ["FAKETIME_TIMESTAMP_FILE"] = file,
                    ["FAKETIME_NO_CACHE"] = "1",
                    ["FAKETIME_DONT_FAKE_MONOTONIC"] = "1",
                },
            });
            return new FakeClockServer(directory, file, server);
        }
        catch
        {
            Directory.Delete(directory, recursive: true);
            throw;
        }
    }

    /// <summary>Steps the server's wall clock forward by <paramref name="step"/>; every backend sees it at its next clock reading.</summary>
    public void StepForward(TimeSpan step)
    {
        Assert.True(step > TimeSpan.Zero, "a forward step");
        if (!OperatingSystem.IsLinux())
        {
            throw new PlatformNotSupportedException();
        }

        _offset += step;
        WriteOffset(_directory, _file, _offset);
    }

    /// <summary>
    /// Writes libfaketime's relative offset (<c>+N</c> seconds, may be fractional) to a new file and renames it over the
    /// old one, so that no clock reading ever sees a half-written file.
    /// </summary>
    [System.Runtime.Versioning.SupportedOSPlatform("linux")]
    private static void WriteOffset(string directory, string file, TimeSpan offset)
    {
        var next = Path.Combine(directory, "offset.next");
        File.WriteAllText(next, string.Create(CultureInfo.InvariantCulture, $"+{offset.TotalSeconds:0.###}\n"));
        File.SetUnixFileMode(next, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.GroupRead | UnixFileMode.OtherRead);
        File.Move(next, file, overwrite: true);
    }

    public async ValueTask DisposeAsync()
    {
        try
        {
            await Server.DisposeAsync();
        }
        finally
        {
            Directory.Delete(_directory, recursive: true);
        }
    }
}

/// <summary>
/// Notices steps of the machine's own wall clock during a test (its wall clock against its monotonic clock, sampled every
/// 50 ms): they step every server's clock too (e.g. a fault run's ClockJump on the same machine), so a clock step test
/// that fails meanwhile says so instead of blaming the engine.
/// </summary>
public sealed class MachineClockWatch : IDisposable
{
    private static readonly TimeSpan Threshold = TimeSpan.FromMilliseconds(500);
    private readonly List<string> _steps = [];
    private readonly Timer _timer;
    private TimeSpan _offset = CurrentOffset();

    public MachineClockWatch() => _timer = new Timer(_ => Sample(), null, TimeSpan.Zero, TimeSpan.FromMilliseconds(50));

    /// <summary>A note for a failure message: empty when the machine's clock was not seen to step.</summary>
    public string Note()
    {
        Sample();
        lock (_steps)
        {
            return _steps.Count == 0
                ? string.Empty
                : "\nNOTE: the machine's own wall clock was stepped during this test (" + string.Join(", ", _steps) +
                  "): something on this machine steps it (e.g. a fault run's ClockJump), which steps the server's clock too, so this result is not the engine's alone.";
        }
    }

    public void Dispose() => _timer.Dispose();

    private static TimeSpan CurrentOffset() =>
        TimeSpan.FromTicks(DateTime.UtcNow.Ticks) - System.Diagnostics.Stopwatch.GetElapsedTime(0);

    private void Sample()
    {
        lock (_steps)
        {
            var offset = CurrentOffset();
            var step = offset - _offset;
            _offset = offset;
            if (step.Duration() > Threshold)
            {
                _steps.Add(string.Create(CultureInfo.InvariantCulture, $"{step.TotalSeconds:+0.0;-0.0} s at {DateTime.UtcNow:HH:mm:ss}"));
            }
        }
    }
}
