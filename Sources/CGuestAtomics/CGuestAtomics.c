#include "CGuestAtomics.h"
