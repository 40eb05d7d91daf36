/* no_dlclose.c: a dlclose that keeps the library loaded, LD_PRELOADed into every test of the MN_SANITIZE build.
 *
 * Open MPI 4.1 loads its components (mca_*.so) with dlopen and unloads them in MPI_Finalize, and it keeps some of
 * their allocations past that point.  LeakSanitizer checks for leaks at exit, after the unload, so those
 * allocations are reported with "<unknown module>" frames that no suppression can name (Open MPI 4.1 has no
 * parameter to keep its components loaded).  With this shim the components stay mapped, LeakSanitizer names them,
 * and tests/sanitizer/lsan.supp suppresses exactly Open MPI's libraries while every other leak is still reported.
 * Built without sanitizer instrumentation (it must not depend on the ASan run-time it is preloaded beside). */
int dlclose(void *handle);

int dlclose(void *handle)
{
    (void)handle;
    return 0;
}
