using System.Runtime.InteropServices;

namespace HighlanderPG.Cli.Commands;

/// <summary>
/// SIGINT (Ctrl+C) and SIGTERM turned into a cancellation, for a command that cleans up and exits with a code of its own
/// (the parser does not handle signals: <c>ProcessTerminationTimeout = null</c> in <see cref="Program"/>).
/// </summary>
internal sealed class StopSignals : IDisposable
{
    private readonly CancellationTokenSource _stop = new();
    private readonly PosixSignalRegistration _interrupt;
    private readonly PosixSignalRegistration _terminate;

    public StopSignals()
    {
        _interrupt = PosixSignalRegistration.Create(PosixSignal.SIGINT, Cancel);
        _terminate = PosixSignalRegistration.Create(PosixSignal.SIGTERM, Cancel);
    }

    /// <summary>Cancelled at the first SIGINT or SIGTERM.</summary>
    public CancellationToken Token => _stop.Token;

    public void Dispose()
    {
        _interrupt.Dispose();
        _terminate.Dispose();
        _stop.Dispose();
    }

    private void Cancel(PosixSignalContext context)
    {
        context.Cancel = true; // the command ends itself, after its clean-up
        _stop.Cancel();
    }
}
