// The shim is header-only (inline functions and constants); this file gives SwiftPM a
// translation unit to build the module from.
#include "ckvm.h"
