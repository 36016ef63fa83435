using HighlanderPG.Cli.Processes;
using HighlanderPG.Cli.Tests.Infrastructure;

namespace HighlanderPG.Cli.Tests;

/// <summary>
/// A run started ahead (<see cref="ProcessLauncher.PrepareAsync"/>): a <c>sh</c> waiting on its FIFO to become the program.
/// It may be told to go (or be discarded) in the instant after it was started, before the shell has even opened its FIFO
/// (a take-over right after the previous run ended, a rehearsal's round).
/// </summary>
public sealed class PreparedLaunchTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("hl-prepared-test-").FullName;

    [Fact]
    public async Task Told_to_go_at_once_after_its_start_it_becomes_the_program_with_the_token()
    {
        for (var i = 0; i < 5; i++)
        {
            var marker = Path.Combine(_dir, $"ran-{i}");
            var prepared = await ProcessLauncher.Shared.PrepareAsync(
                new LaunchSpec("/bin/sh", ["-c", "echo \"token=$HIGHLANDER_FENCING_TOKEN pid=$$\" > \"$0\"", marker]), "/bin/sh");
            try
            {
                Assert.True(prepared.TryGo("42"), "a process started ahead that is alive must take the token, whether or not its shell is waiting yet");
                await prepared.Process.WaitForExitAsync().WaitAsync(TimeSpan.FromSeconds(10));
                Assert.Equal(0, prepared.Process.ExitCode);
                Assert.Equal($"token=42 pid={prepared.Process.Id}", (await File.ReadAllTextAsync(marker)).Trim()); // the same process, by exec
            }
            finally
            {
                ProcessLauncher.Shared.Forget(prepared.Process.Id);
                prepared.Release();
            }
        }
    }

    [Fact]
    public async Task Discarded_at_once_after_its_start_it_is_gone_and_leaves_no_directory()
    {
        var prepared = await ProcessLauncher.Shared.PrepareAsync(new LaunchSpec("/bin/sh", ["-c", "exit 0"]), "/bin/sh");
        var pid = prepared.Process.Id;
        var directories = Directory.GetDirectories(Path.GetTempPath(), $"highlander-prepared-{Environment.ProcessId}-*");
        Assert.NotEmpty(directories);
        prepared.Discard(); // before setsid it has no process group of its own: a signal to the group alone would miss it
        await ProcessWatch.AssertGoneAsync(pid, "the discarded process");
        Assert.All(directories, d => Assert.False(Directory.Exists(d), d));
    }

    public void Dispose() => Directory.Delete(_dir, recursive: true);
}
