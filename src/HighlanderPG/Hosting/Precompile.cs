using System.Reflection;
using System.Runtime.CompilerServices;

namespace HighlanderPG.Hosting;

/// <summary>
/// Compiles code ahead of its first run (<see cref="RuntimeHelpers.PrepareMethod(RuntimeMethodHandle)"/>) where that first
/// run would otherwise fall on the way of a take-over or a stop, and a rehearsal cannot run it (docs/lease-protocol.md,
/// "Rehearsal"). Best effort: what cannot be prepared (a generic method, code of an open generic type) is left to the JIT.
/// </summary>
internal static class Precompile
{
    private const BindingFlags Any = BindingFlags.Instance | BindingFlags.Static | BindingFlags.Public | BindingFlags.NonPublic;

    /// <summary>Every method of <paramref name="type"/> with one of <paramref name="names"/> (a property's getter is <c>get_Name</c>), and the state machine of each async one.</summary>
    public static void Methods(Type type, params string[] names)
    {
        foreach (var method in type.GetMethods(Any | BindingFlags.DeclaredOnly))
        {
            if (names.Contains(method.Name))
            {
                Method(method);
            }
        }
    }

    /// <summary>The code a delegate runs (a lambda's body, on its closure).</summary>
    public static void Delegate(Delegate? code)
    {
        if (code is not null)
        {
            Method(code.Method);
        }
    }

    public static void Method(MethodInfo method)
    {
        try
        {
            if (method.IsGenericMethodDefinition || method.DeclaringType is not { } declaring || declaring.ContainsGenericParameters)
            {
                return;
            }

            if (declaring.IsGenericType)
            {
                RuntimeHelpers.PrepareMethod(method.MethodHandle, [.. declaring.GenericTypeArguments.Select(t => t.TypeHandle)]);
            }
            else
            {
                RuntimeHelpers.PrepareMethod(method.MethodHandle);
            }

            if (method.GetCustomAttribute<AsyncStateMachineAttribute>() is { StateMachineType: { ContainsGenericParameters: false } machine }
                && machine.GetMethod("MoveNext", Any) is { } moveNext)
            {
                RuntimeHelpers.PrepareMethod(moveNext.MethodHandle);
            }
        }
        catch (Exception ex) when (ex is ArgumentException or NotSupportedException or InvalidOperationException or TypeLoadException)
        {
            // Only ahead of time: the JIT compiles it at its first call anyway.
        }
    }
}
